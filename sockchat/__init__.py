"""sockchat: a turn-taking chat server, client and protocol framework for Twisted.

The public API is what ``__all__`` lists; every module whose name starts with
an underscore may change without notice.
"""

from ._client import (
    Conversation,
    ConversationEnded,
    LineRefused,
    NoGreeting,
    NotYourTurn,
    SockchatError,
    connect,
)
from ._codec import DEFAULT_MAX_LINE
from ._console import ConsoleResponder
from ._engine import Reason
from ._framing import LineFraming, RawFraming
from ._limits import Admission
from ._pair import PairResponder
from ._render import safe_text
from ._responder import (
    AnswerFailed,
    ConversationInfo,
    EchoResponder,
    FunctionResponder,
    IConversation,
    ILifecycle,
    IResponder,
    Unavailable,
    as_responder,
)
from ._server import ChatServerFactory
from ._transcript import ITranscript, TranscriptEntry
from ._transcript_file import TranscriptFile
from ._version import __version__
from ._web import chat_site
from ._wire import QUIT, Notice, NoticeKind

__all__ = [
    "DEFAULT_MAX_LINE",
    "QUIT",
    "Admission",
    "AnswerFailed",
    "ChatServerFactory",
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
    "SockchatError",
    "TranscriptEntry",
    "TranscriptFile",
    "Unavailable",
    "__version__",
    "as_responder",
    "chat_site",
    "connect",
    "safe_text",
]
