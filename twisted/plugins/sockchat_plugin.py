"""Register ``twistd sockchat``.

Only the plugin object lives here: importing this module must stay cheap and
must not import the reactor, because twistd imports every plugin module to
list them.
"""

from twisted.application.service import ServiceMaker

sockchat = ServiceMaker(
    "sockchat",
    "sockchat.tap",
    "A turn-taking chat server (the socket tutorial's chat, done right).",
    "sockchat",
)
