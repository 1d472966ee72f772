"""Telnet's commands, taken out of what a telnet client sends.  No I/O here.

``telnet host port`` sends plain lines ending in CRLF, which the line codec
already accepts.  But some keys make it send telnet commands, which start
with the byte IAC (0xFF).  Debian's telnet (inetutils), for example, sends
``IAC IP IAC DO TIMING-MARK`` for Ctrl-C, and then hides everything the
server says until the server answers the timing mark.

Byte 0xFF never occurs in UTF-8, so taking these commands out can never
change a line of text.  ``TelnetFilter`` removes them, answers a timing
mark (so telnet shows the server's output again), and reports the commands
a person caused, so the server can say what it did with them.  It never
removes a newline: a line always ends where a ``\\n`` is.

Option negotiation follows RFC 854 (and RFC 1143's rules against loops),
for a server that enables no option: ``DO X`` is refused with ``WONT X``,
``WILL X`` with ``DONT X``; ``DONT X`` and ``WONT X`` ask for what is
already so, and get no answer.  Each of the four takes the byte after it
as the option's code, as the RFC says, whatever that byte is (except a
newline); so each is reported too, the first time it names an option, in
the ``!info telnet`` notice: a client that sent ``0xFF 0xFE`` as something
else (a UTF-16 byte-order mark, say) is told which of its bytes went.
"""

from __future__ import annotations

from attrs import frozen

from sockchat._core.wire import QUIT, Notice, NoticeKind

__all__ = ["TelnetFilter", "TelnetHeard", "telnet_notice"]

IAC = 0xFF
DONT, DO, WONT, WILL = 0xFE, 0xFD, 0xFC, 0xFB
#: RFC 860: DO TIMING-MARK asks "tell me when you got here"; WILL answers it.
TIMING_MARK = 0x06
_NEWLINE = 0x0A

#: Two-byte commands (IAC and one of these), by name.  SB and SE are here
#: too: sockchat agrees to no option, so a client has nothing to negotiate.
_COMMANDS = {
    0xF0: "SE",
    0xF1: "NOP",
    0xF2: "DM",
    0xF3: "BRK",
    0xF4: "IP",
    0xF5: "AO",
    0xF6: "AYT",
    0xF7: "EC",
    0xF8: "EL",
    0xF9: "GA",
    0xFA: "SB",
}
#: Commands that only keep the connection going: nothing to tell anyone.
_QUIET = frozenset({"NOP", "GA", "DM", "SE", "SB"})

#: What a person did to make telnet send these.
_MEANING = {
    "IP": "an interrupt (Ctrl-C)",
    "BRK": "a break",
    "AO": "an abort-output",
    "AYT": "are-you-there",
    "EC": "an erase-character",
    "EL": "an erase-line",
}


#: Option names, for the notice (RFC 857, 858, 859, 860, 1091, 1073, 1079,
#: 1372, 1184, 1096, 1572).
_OPTIONS = {
    1: "ECHO",
    3: "SUPPRESS-GO-AHEAD",
    5: "STATUS",
    6: "TIMING-MARK",
    24: "TERMINAL-TYPE",
    31: "NAWS",
    32: "TERMINAL-SPEED",
    33: "TOGGLE-FLOW-CONTROL",
    34: "LINEMODE",
    35: "X-DISPLAY-LOCATION",
    39: "NEW-ENVIRON",
}
_VERBS = {DO: "DO", DONT: "DONT", WILL: "WILL", WONT: "WONT"}


@frozen
class TelnetHeard:
    """What one chunk held in telnet commands."""

    #: The commands worth telling a person about, by name (``"IP"``, ...).
    commands: tuple[str, ...]
    #: Bytes to send back: refusals of the options the client negotiated.
    reply: bytes
    #: Negotiations not reported before: (verb, option code), in order.
    negotiations: tuple[tuple[str, int], ...] = ()


class TelnetFilter:
    """Take telnet commands out of a byte stream, chunk by chunk.

    A command split across chunks is put together again: the state between
    chunks is at most the two bytes of an unfinished command.  Commands are
    reported once no command is left unfinished, so that the refusal of
    telnet's timing mark goes out before anything said about them.
    """

    __slots__ = ("_commands", "_held", "_negotiations", "_reply", "_reported", "held")

    def __init__(self) -> None:
        self._held = b""  # IAC, or IAC and a negotiation verb
        #: Bytes of an unfinished command kept for the next chunk.
        self.held = 0
        # Not yet reported: made when the first command comes (most
        # conversations never send one, and each costs 56 bytes).
        self._commands: list[str] | None = None
        self._reply: bytearray | None = None
        self._negotiations: list[tuple[str, int]] = []
        #: One bit per (verb, option) reported already: 128 bytes at most,
        #: made at the first negotiation.
        self._reported: bytearray | None = None

    def feed(self, data: bytes) -> tuple[bytes, TelnetHeard | None]:
        """Return the chunk without its commands, and what they were."""
        if self._held:
            data, self._held = self._held + data, b""
            self.held = 0
        if IAC not in data:
            return data, None
        out = bytearray()
        if self._commands is None or self._reply is None:
            self._commands, self._reply = [], bytearray()
        commands = self._commands
        reply = self._reply
        i, end = 0, len(data)
        while i < end:
            at = data.find(IAC, i)
            if at < 0:
                out += data[i:]
                break
            out += data[i:at]
            if at + 1 == end:
                self._held = data[at:]
                break
            verb = data[at + 1]
            if verb == IAC:  # an escaped 0xFF: a data byte (never UTF-8)
                out.append(IAC)
                i = at + 2
            elif verb in (DO, DONT, WILL, WONT):
                if at + 2 == end:
                    self._held = data[at:]
                    break
                option = data[at + 2]
                if option == _NEWLINE:  # not telnet after all; keep the newline
                    out += data[at : at + 2]
                    i = at + 2
                    continue
                if verb == DO and option == TIMING_MARK:
                    reply += bytes([IAC, WILL, option])
                elif verb == DO:
                    reply += bytes([IAC, WONT, option])
                elif verb == WILL:
                    reply += bytes([IAC, DONT, option])
                if option != TIMING_MARK:  # Ctrl-C's own: said as the interrupt
                    self._note(verb, option)
                i = at + 3
            elif verb in _COMMANDS:
                name = _COMMANDS[verb]
                if name not in _QUIET:
                    commands.append(name)
                i = at + 2
            else:  # IAC and a byte that is no command: data, refused later
                out += data[at : at + 2]
                i = at + 2
        self.held = len(self._held)
        if self._held or not (commands or reply or self._negotiations):
            return bytes(out), None
        heard = TelnetHeard(tuple(commands), bytes(reply), tuple(self._negotiations))
        self._commands, self._reply = [], bytearray()
        self._negotiations = []
        return bytes(out), heard

    def _note(self, verb: int, option: int) -> None:
        """Report (*verb*, *option*) once per conversation: a flood of the
        same negotiation is not a flood of notices."""
        if self._reported is None:
            self._reported = bytearray(128)
        bit = (verb - WILL) * 256 + option
        if self._reported[bit >> 3] & (1 << (bit & 7)):
            return
        self._reported[bit >> 3] |= 1 << (bit & 7)
        self._negotiations.append((_VERBS[verb], option))


def _option(code: int) -> str:
    name = _OPTIONS.get(code)
    if name is not None:
        return f"option {code} ({name})"
    if 0x21 <= code < 0x7F:  # if it was meant as text, say which byte went
        return f"option {code} (the byte {chr(code)!r}, if it was meant as text)"
    return f"option {code}"


def _negotiation(verb: str, option: int) -> str:
    what = _option(option)
    if verb == "DO":
        return f"DO {what}, refused (WONT)"
    if verb == "WILL":
        return f"WILL {what}, refused (DONT)"
    return f"{verb} {what}, which was off already"


def telnet_notice(heard: TelnetHeard) -> Notice | None:
    """The notice that tells a telnet user what became of their keys."""
    if not heard.commands and not heard.negotiations:
        return None
    if set(heard.commands) == {"AYT"} and not heard.negotiations:
        return Notice(NoticeKind.INFO, "telnet", "yes, sockchat is here.")
    names = sorted(set(heard.commands), key=heard.commands.index)
    said = ", ".join(
        [_MEANING.get(name, f"the command {name}") for name in names]
        + [_negotiation(verb, option) for verb, option in heard.negotiations]
    )
    return Notice(
        NoticeKind.INFO,
        "telnet",
        f"telnet sent {said}; sockchat takes plain lines and ignores telnet "
        f"commands. Send {QUIT} to quit, or press Ctrl-] and type quit to leave "
        "telnet.",
    )
