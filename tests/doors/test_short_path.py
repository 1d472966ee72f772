"""The usual turn's short path says and does exactly what the long path does.

``Runner.receive_data`` answers one good line in turn with the engine's
``take_line`` and ``answer_now`` (issue 21); anything else goes through
the engine's actions.  The short path's one flag
(``ServerConversation._short_path_open``) is worked out again whenever
what it stands for changes.  Here the same conversation is played twice,
once as usual and once with the long path forced (an observer of every
move, as ``--trace`` is), and the client must get the same bytes, the
connection must end the same way, and the counts must agree.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from sockchat import ChatServerFactory, ConversationInfo, IResponder, Signed
from sockchat._responders.contract import IConversation

MAX_LINE = 40


@implementer(IResponder)
class Scripted:
    """Answers as the line says: ``a:TEXT`` answers TEXT, ``n:`` says a
    notice first, ``e:`` raises, ``x:`` ends the conversation, ``d:``
    answers later (the test fires it), ``l:`` answers with a newline in it;
    any other line is echoed."""

    def __init__(self) -> None:
        self.conversation: IConversation | None = None
        self.later: list[Deferred[str]] = []

    def started(self, conversation: IConversation) -> None:
        self.conversation = conversation

    def respond(self, info: ConversationInfo, text: str) -> Any:
        kind, _, rest = text.partition(":")
        if kind == "a":
            return rest
        if kind == "n":
            assert self.conversation is not None
            self.conversation.notify("motd", "first " + rest)
            return rest
        if kind == "e":
            raise RuntimeError("scripted failure")
        if kind == "x":
            assert self.conversation is not None
            self.conversation.end("bye", "scripted end")
            return rest
        if kind == "d":
            d: Deferred[str] = Deferred()
            self.later.append(d)
            return d
        if kind == "l":
            return "two\nlines"
        return text


LINES = st.sampled_from(
    [
        b"hello\n",
        b"hi\r\n",
        b"\n",
        b"q\n",
        b"!bang\n",
        b"a:q\n",
        b"a:!stuffed\n",
        b"a:\xc3\xa9t\xc3\xa9\n",
        b"n:note\n",
        b"e:\n",
        b"x:last\n",
        b"d:\n",
        b"l:\n",
        b"x" * (MAX_LINE + 5) + b"\n",
        b"\xff\xfe\n",
        b"\xff\xfb\x01tel\n",  # a telnet negotiation before the text
        b"two\nat once\n",
        b"part",
    ]
)

#: What the test does between reads: read a chunk, fire the oldest later
#: answer, pause or resume reading, let time pass.
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("read"), LINES),
        st.tuples(
            st.just("fire"),
            st.sampled_from(
                ["late", "q", "bad\nanswer", Signed("signed", "bob"), Signed("q", "x")]
            ),
        ),
        st.tuples(st.just("pause"), st.none()),
        st.tuples(st.just("resume"), st.none()),
        st.tuples(st.just("wait"), st.sampled_from([1.0, 25.0])),
    ),
    max_size=30,
)


def play(steps: list[tuple[str, Any]], *, long_way: bool) -> dict[str, object]:
    clock = Clock()
    responder = Scripted()
    factory = ChatServerFactory(
        responder, clock=clock, max_line=MAX_LINE, idle_timeout=60, answer_timeout=30
    )
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    proto.makeConnection(transport)
    runner = proto.runner
    assert runner is not None
    engine = runner.engine
    if long_way:
        engine.observe(runner, every_move=True)
        assert not engine._short_path_open
    for kind, arg in steps:
        if transport.disconnecting:
            break
        if kind == "read":
            proto.dataReceived(arg)
        elif kind == "fire":
            if responder.later:
                d = responder.later.pop(0)
                if not d.called:
                    d.callback(arg)
        elif kind == "pause":
            runner.pauseProducing()
        elif kind == "resume":
            runner.resumeProducing()
        else:
            clock.advance(arg)
    return {
        "said": transport.value(),
        "closing": transport.disconnecting,
        "lines": engine.lines,
        "answers": engine.answers,
        "bytes_in": engine.bytes_in,
        "bytes_out": engine.bytes_out,
        "phase": engine.phase,
        "turn": engine.turn,
        "flow": engine.flow,
    }


@settings(max_examples=300, deadline=None)
@given(STEPS)
# An answer that comes later takes the short path too (random steps seldom
# give one after the first turn).
@example([("read", b"hello\n"), ("read", b"d:\n"), ("fire", "late")])
@example([("read", b"hello\n"), ("read", b"d:\n"), ("fire", Signed("s", "bob"))])
@example([("read", b"hello\n"), ("read", b"d:\n"), ("fire", Signed("q", "bob"))])
def test_the_short_path_and_the_long_path_say_the_same(steps):
    assert play(steps, long_way=False) == play(steps, long_way=True)


def test_the_usual_turn_takes_the_short_path():
    """The flag opens after the first line and answer, and closes with
    the conversation (else the test above would compare a path with
    itself)."""
    clock = Clock()
    factory = ChatServerFactory(Scripted(), clock=clock, max_line=MAX_LINE)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    proto.makeConnection(StringTransport())
    engine = proto.runner.engine
    assert not engine._short_path_open  # the first line is announced
    proto.dataReceived(b"first\n")
    assert engine._short_path_open
    taken = engine.take_line(b"second\n", clock.seconds())
    assert taken == "second"
    assert engine.answer_now("second", clock.seconds()) == b"second\n"
    proto.runner.pauseProducing()
    assert not engine._short_path_open
    proto.runner.resumeProducing()
    assert engine._short_path_open
    proto.dataReceived(b"q\n")
    assert not engine._short_path_open
