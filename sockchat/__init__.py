"""sockchat: a turn-taking chat server, client and protocol framework for Twisted.

The public API is what ``__all__`` lists; every module whose name starts with
an underscore may change without notice.
"""

from ._client import (
    Conversation,
    ConversationEnded,
    LineRefused,
    NotYourTurn,
    SockchatError,
    connect,
)
from ._codec import DEFAULT_MAX_LINE
from ._console import ConsoleResponder
from ._render import safe_text
from ._responder import ConversationInfo, EchoResponder, IResponder
from ._server import ChatServerFactory
from ._wire import QUIT, Notice, NoticeKind

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_LINE",
    "QUIT",
    "ChatServerFactory",
    "ConsoleResponder",
    "Conversation",
    "ConversationEnded",
    "ConversationInfo",
    "EchoResponder",
    "IResponder",
    "LineRefused",
    "NotYourTurn",
    "Notice",
    "NoticeKind",
    "SockchatError",
    "__version__",
    "connect",
    "safe_text",
]
