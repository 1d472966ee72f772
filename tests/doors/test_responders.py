"""The responder contract beyond respond(): hooks, speaking first, timeouts,
and making responders out of classes, factories and plain callables."""

from __future__ import annotations

import sys
import textwrap

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from sockchat import (
    ConversationEnded,
    ConversationInfo,
    EchoResponder,
    FunctionResponder,
    IConversation,
    ILifecycle,
    IResponder,
    LineRefused,
    Notice,
    NotYourTurn,
    WelcomeLater,
    as_responder,
    connect,
)
from sockchat._operations.loading import ResponderNotLoaded, load_responder
from sockchat.testing import MemoryServer, NoResultYet, RecordingConversation


@implementer(IResponder, ILifecycle)
class Hooked:
    """Records the hooks; what started() does is up to each test."""

    def __init__(self, opening=None, on_start=None) -> None:
        self.opening = opening
        self.on_start = on_start
        self.started_with: list[IConversation] = []
        self.ended_with: list[tuple[int, str]] = []

    def started(self, conversation):
        self.started_with.append(conversation)
        if self.on_start is not None:
            self.on_start(conversation)
        return self.opening

    def ended(self, conversation, reason):
        self.ended_with.append((conversation.info.id, reason))

    def respond(self, conversation, text):
        return f"{conversation.id}:{text}"


def notices_of(server: MemoryServer):
    seen: list[Notice] = []
    return seen, server.connect(on_notice=seen.append)


def test_hooks_get_the_conversation_with_its_peer_and_the_reason_it_ended():
    responder = Hooked()
    server = MemoryServer(responder)
    conversation = server.connect(host="10.1.2.3")
    (handle,) = responder.started_with
    assert handle.info.id == 1
    assert handle.info.peer.startswith("10.1.2.3:")
    assert server.say(conversation, "hi") == "1:hi"
    server.result(conversation.quit())
    assert responder.ended_with == [(1, "quit")]


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("abort", "connection-lost"),
        ("idle", "idle-timeout"),
        ("shutdown", "shutdown"),
        ("answer-q", "answered-quit"),
    ],
)
def test_ended_says_why(how, reason):
    responder = Hooked()
    server = MemoryServer(responder, idle_timeout=30)
    conversation = server.connect()
    if how == "abort":
        conversation.abort()
    elif how == "idle":
        server.advance(31)
    elif how == "shutdown":
        server.factory.close_all()
    else:
        responder.respond = lambda conversation, text: "q"
        with pytest.raises(ConversationEnded):
            server.say(conversation, "bye?")
    server.flush()
    assert responder.ended_with == [(1, reason)]


def test_notices_sent_while_starting_come_after_the_welcome():
    responder = Hooked(on_start=lambda c: c.notify("motd", "be kind"))
    server = MemoryServer(responder)
    seen, _ = notices_of(server)
    assert [(n.code, n.text) for n in seen][1:] == [("motd", "be kind")]
    assert seen[0].code == "welcome"


def test_a_responder_may_refuse_a_conversation_from_started():
    responder = Hooked(on_start=lambda c: c.end("closed", "come back at nine"))
    server = MemoryServer(responder)
    seen, conversation = notices_of(server)
    assert [(n.code, n.text) for n in seen] == [("closed", "come back at nine")]
    with pytest.raises(ConversationEnded):
        server.result(conversation.say("hello?"))
    assert server.factory.conversations == {}
    assert responder.ended_with == [(1, "closed")]


def test_a_started_hook_that_raises_closes_only_that_conversation(logged_failures):
    def boom(conversation):
        raise RuntimeError("database down")

    responder = Hooked(on_start=boom)
    server = MemoryServer(responder)
    seen, _ = notices_of(server)
    assert [n.code for n in seen] == ["unavailable"]
    assert "database down" not in seen[0].text  # details stay in the log
    assert len(logged_failures) == 1
    responder.on_start = None
    assert server.say(server.connect(), "still serving") == "2:still serving"
    assert responder.ended_with == []  # the first never started


def test_bad_notices_from_a_responder_are_refused_at_once():
    handle = RecordingConversation()
    with pytest.raises(ValueError, match="notice code"):
        handle.notify("Not A Code", "text")
    with pytest.raises(ValueError, match="one line"):
        handle.notify("code", "two\nlines")


def test_the_server_may_speak_first():
    responder = Hooked(opening="welcome to the help line; what is your question?")
    server = MemoryServer(responder)
    seen, conversation = notices_of(server)
    assert seen[0].code == "listen"
    assert not conversation.my_turn
    with pytest.raises(NotYourTurn):
        server.result(conversation.say("me first"))
    assert server.result(conversation.listen()).startswith("welcome to the help")
    assert conversation.my_turn
    assert server.say(conversation, "ports?") == "1:ports?"


def test_an_opening_that_fails_gives_the_client_the_turn(logged_failures):
    responder = Hooked(opening=fail(RuntimeError("no")))
    server = MemoryServer(responder)
    _, conversation = notices_of(server)
    with pytest.raises(LineRefused) as refused:
        server.result(conversation.listen())
    assert refused.value.notice.code == "responder-failed"
    assert "first line could not be given" in refused.value.notice.text
    assert conversation.my_turn
    assert server.say(conversation, "then I start") == "1:then I start"


def later_welcome(server: MemoryServer, responder: Hooked | None):
    """Connect; the welcome waits for *responder*'s WelcomeLater."""
    seen: list[Notice] = []
    connecting = connect(server.clock, server.endpoint(), on_notice=seen.append)
    server.advance(5)  # less than the client's greeting timeout
    assert seen == []  # no welcome yet
    return seen, connecting


def test_the_welcome_may_wait_until_the_responder_decides_who_speaks_first():
    later = WelcomeLater()
    responder = Hooked(opening=later, on_start=lambda c: c.notify("motd", "hi"))
    server = MemoryServer(responder)
    seen, connecting = later_welcome(server, responder)
    opening: Deferred[str] = Deferred()
    later.server_first(opening)
    conversation = server.result(connecting)
    assert [n.code for n in seen] == ["listen", "motd"]
    heard = conversation.listen()
    opening.callback("you were expected")
    assert server.result(heard) == "you were expected"
    assert server.say(conversation, "thanks") == "1:thanks"


def test_a_welcome_decided_later_may_give_the_client_the_first_turn():
    later = WelcomeLater()
    server = MemoryServer(Hooked(opening=later))
    seen, connecting = later_welcome(server, None)
    later.client_first()
    conversation = server.result(connecting)
    assert [n.code for n in seen] == ["welcome"]
    assert server.say(conversation, "me first") == "1:me first"


def test_lines_sent_before_the_welcome_wait_for_it():
    later = WelcomeLater()
    server = MemoryServer(Hooked(opening=later))
    later_welcome(server, None)
    client = server._pumps[-1].client
    client.transport.write(b"early\n")
    server.flush()
    later.client_first()
    server.flush()
    assert client.turns.turn.value == "client"  # answered: "1:early"


def test_a_welcome_that_cannot_be_decided_says_unavailable(logged_failures):
    later = WelcomeLater()
    server = MemoryServer(Hooked(opening=later))
    seen, connecting = later_welcome(server, None)
    later.decided.errback(RuntimeError("no partner service"))
    server.result(connecting)
    assert [n.code for n in seen] == ["unavailable"]
    assert len(logged_failures) == 1
    assert server.factory.conversations == {}


def test_a_client_that_leaves_before_the_decision_cancels_it():
    later = WelcomeLater()
    responder = Hooked(opening=later)
    server = MemoryServer(responder)
    later_welcome(server, responder)
    server._pumps[-1].client.transport.loseConnection()
    server.flush()
    assert responder.ended_with == [(1, "connection-lost")]
    later.client_first()  # too late: nothing happens, nothing fails
    server.flush()


def test_a_slow_answer_times_out_and_the_client_may_go_on():
    cancelled = []

    @implementer(IResponder)
    class Slow:
        def respond(self, conversation, text):
            if text == "fast":
                return succeed("quick")
            return Deferred(lambda d: cancelled.append(text))

    server = MemoryServer(Slow(), answer_timeout=5)
    conversation = server.connect()
    waiting = conversation.say("slow")
    server.flush()
    server.advance(4.9)
    with pytest.raises(NoResultYet):
        server.result(waiting)
    server.advance(0.2)
    with pytest.raises(LineRefused) as refused:
        server.result(waiting)
    assert refused.value.notice.code == "responder-timeout"
    assert "no answer within 5 seconds" in refused.value.notice.text
    assert cancelled == ["slow"]
    assert server.say(conversation, "fast") == "quick"


def test_answers_may_be_coroutines():
    async def respond(conversation, text):
        return text.upper()

    server = MemoryServer(as_responder(respond))
    assert server.say(server.connect(), "shout") == "SHOUT"


# Making responders.


@implementer(IResponder)
class Implemented:
    def respond(self, conversation, text):
        return "implemented"


class NotImplemented_:
    def respond(self, conversation, text):
        return "no"


def plain(conversation, text):
    return f"plain {text}"


def factory():
    return EchoResponder()


INFO = ConversationInfo(1, "test")


def test_as_responder_accepts_instances_classes_factories_and_callables():
    instance = EchoResponder()
    assert as_responder(instance) is instance
    assert as_responder(Implemented).respond(INFO, "x") == "implemented"
    assert isinstance(as_responder(factory), EchoResponder)
    made = as_responder(plain)
    assert isinstance(made, FunctionResponder)
    assert made.respond(INFO, "x") == "plain x"


@pytest.mark.parametrize(
    ("thing", "message"),
    [
        (NotImplemented_, "does not implement IResponder"),
        (42, "neither a responder, a class, nor a callable"),
        (lambda a, b, c: None, "takes (a, b, c)"),
        (lambda: 42, "returned int, not an IResponder"),
    ],
)
def test_as_responder_says_why_not(thing, message):
    with pytest.raises(
        TypeError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        as_responder(thing)


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    (tmp_path / "mybots").mkdir()
    (tmp_path / "mybots" / "__init__.py").write_text("")
    (tmp_path / "mybots" / "good.py").write_text(
        textwrap.dedent(
            """
            def respond(conversation, text):
                return "good " + text
            """
        )
    )
    (tmp_path / "mybots" / "broken.py").write_text("import no_such_dependency\n")
    (tmp_path / "mybots" / "raising.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("mybots")]:
        del sys.modules[name]


def test_load_responder_from_the_current_directory(module_dir):
    responder = load_responder("mybots.good:respond")
    assert responder.respond(INFO, "day") == "good day"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("nosuch.mod:x", "there is no module named 'nosuch'"),
        ("mybots.nope:x", "there is no module named 'mybots.nope'"),
        ("mybots.good:missing", "module mybots.good has no 'missing'"),
        ("mybots.broken:x", "importing mybots.broken failed: No module named"),
        ("mybots.raising:x", "importing mybots.raising failed: ZeroDivisionError"),
        ("mybots.good:", "give it as package.module:name"),
    ],
)
def test_load_responder_errors_are_one_line(module_dir, reference, message):
    with pytest.raises(ResponderNotLoaded) as refused:
        load_responder(reference)
    text = str(refused.value)
    assert text.startswith(f"{reference}: ")
    assert message in refused.value.problem
    assert refused.value.reference == reference
    assert "\n" not in text


def test_an_unavailable_responder_gives_the_turn_back_without_a_traceback(
    logged_failures,
):
    from sockchat import Unavailable

    @implementer(IResponder)
    class Away:
        def respond(self, conversation, text):
            if text == "later":
                return fail(Unavailable("the broker is unreachable"))
            raise Unavailable("no worker is running")

    server = MemoryServer(Away())
    _, conversation = notices_of(server)
    for text, why in (("now", "no worker is running"), ("later", "the broker is")):
        with pytest.raises(LineRefused) as refused:
            server.result(conversation.say(text))
        assert refused.value.notice.code == "unavailable"
        assert why in refused.value.notice.text
        assert conversation.my_turn
    assert logged_failures == []


def test_an_answer_that_failed_elsewhere_says_how(logged_failures):
    from sockchat import AnswerFailed

    @implementer(IResponder)
    class Remote:
        def respond(self, conversation, text):
            return fail(AnswerFailed("the worker's responder raised KeyError"))

    server = MemoryServer(Remote())
    _, conversation = notices_of(server)
    with pytest.raises(LineRefused) as refused:
        server.result(conversation.say("hi"))
    assert refused.value.notice.code == "responder-failed"
    assert "the worker's responder raised KeyError" in refused.value.notice.text
    assert conversation.my_turn
    assert logged_failures == []
