"""sockchat: a turn-taking chat server, client and protocol framework for Twisted.

The public API is what ``__all__`` lists; every module whose name starts with
an underscore may change without notice.
"""

from sockchat._console.responder import ConsoleResponder
from sockchat._core.defaults import DEFAULT_MAX_LINE
from sockchat._core.engine import Reason
from sockchat._core.framing import LineFraming, RawFraming
from sockchat._core.limits import Admission
from sockchat._core.render import safe_text
from sockchat._core.transcript import ITranscript, TranscriptEntry
from sockchat._core.wire import QUIT, Notice, NoticeKind
from sockchat._doors.client import (
    Conversation,
    ConversationEnded,
    LineRefused,
    NoGreeting,
    NotYourTurn,
    SockchatError,
    connect,
)
from sockchat._doors.tcp import ChatServerFactory
from sockchat._doors.web import chat_site
from sockchat._operations.services import ChatService
from sockchat._operations.transcript_file import TranscriptFile
from sockchat._responders.contract import (
    AnswerFailed,
    ConversationInfo,
    EchoResponder,
    FunctionResponder,
    IConversation,
    ILifecycle,
    IResponder,
    Signed,
    Unavailable,
    WelcomeLater,
    as_responder,
)
from sockchat._responders.pair import PairResponder
from sockchat._version import __version__

__all__ = [
    "DEFAULT_MAX_LINE",
    "QUIT",
    "Admission",
    "AnswerFailed",
    "ChatServerFactory",
    "ChatService",
    "ConsoleResponder",
    "Conversation",
    "ConversationEnded",
    "ConversationInfo",
    "EchoResponder",
    "FunctionResponder",
    "IConversation",
    "ILifecycle",
    "IResponder",
    "ITranscript",
    "LineFraming",
    "LineRefused",
    "NoGreeting",
    "NotYourTurn",
    "Notice",
    "NoticeKind",
    "PairResponder",
    "RawFraming",
    "Reason",
    "Signed",
    "SockchatError",
    "TranscriptEntry",
    "TranscriptFile",
    "Unavailable",
    "WelcomeLater",
    "__version__",
    "as_responder",
    "chat_site",
    "connect",
    "safe_text",
]
