"""``sockchat.ChatService``: a factory on an endpoint, in a Twisted
application, that says goodbye to every client when it stops."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.application.service import MultiService
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from sockchat import ChatServerFactory, ChatService, ConversationEnded, connect
from sockchat._core.stats import Health
from sockchat._operations.services import WebChatService

from conftest import has_fired
from fakes import Later, ListeningEndpoint, lose, open_conversation, said

SHUTDOWN = "!bye shutdown: the server is shutting down."


def test_starting_listens_with_the_factory_and_stopping_says_goodbye_first():
    endpoint = ListeningEndpoint()
    factory = ChatServerFactory(Later(), clock=Clock())
    application = MultiService()
    ChatService(endpoint, factory).setServiceParent(application)
    application.privilegedStartService()
    application.startService()
    assert endpoint.factory is factory
    waiting, waiting_transport = open_conversation(factory)
    waiting.dataReceived(b"a line that is never answered\n")
    talking, talking_transport = open_conversation(factory)
    said(waiting_transport), said(talking_transport)

    stopped = application.stopService()

    assert not endpoint.port.listening
    assert said(waiting_transport) == [SHUTDOWN]
    assert said(talking_transport) == [SHUTDOWN]
    assert not has_fired(stopped), "it waits for every client to go"
    lose(waiting)
    assert not has_fired(stopped)
    lose(talking)
    assert has_fired(stopped)


def test_a_web_door_says_not_accepting_from_its_stop():
    health = Health()
    factory = ChatServerFactory(Later(), clock=Clock())
    web = WebChatService(ListeningEndpoint(), "tcp:8080", factory, health=health)
    web.privilegedStartService()
    web.startService()
    assert health.accepting
    web.stopService()
    assert not health.accepting


@pytest_twisted.ensureDeferred
async def test_over_loopback_a_client_hears_the_goodbye_and_the_port_closes():
    from twisted.internet import reactor

    factory = ChatServerFactory(Later())
    service = ChatService(
        TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), factory
    )
    service.privilegedStartService()
    service.startService()
    assert service.port is not None
    port = service.port.getHost().port
    client = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    conversation = await connect(reactor, client)
    ended = conversation.when_ended().addTimeout(10, reactor)

    await service.stopService().addTimeout(10, reactor)

    how: ConversationEnded = await ended
    assert how.notice is not None
    assert (how.notice.code, how.clean) == ("shutdown", True)
    assert factory.conversations == {}
    with pytest.raises(ConnectionRefusedError):
        await connect(reactor, client)


def test_a_busy_port_is_one_line():
    from twisted.internet import reactor

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        where = f"tcp:{port}:interface=127.0.0.1"
        service = ChatService(
            TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"),
            ChatServerFactory(Later()),
            description=where,
        )
        with pytest.raises(SystemExit) as refused:
            service.privilegedStartService()
    assert str(refused.value) == (
        f"sockchat: cannot listen on {where}: the address is already in use "
        "(is another server running? choose another port)"
    )
    assert service.port is None


def test_the_listening_lines_name_who_answers_in_a_sentence():
    """``(operators answers)`` read wrong: the line names the responder
    after "answered by", which reads for any name."""
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observe(event):
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        factory = ChatServerFactory(Later(), clock=Clock())
        port = ChatService(ListeningEndpoint(), factory, label="operators")
        port.privilegedStartService()
        web = WebChatService(ListeningEndpoint(), "tcp:8080", factory, "operators")
        web.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(observe)
    lines = [t for t in seen if t.startswith("sockchat ")]
    assert len(lines) == 2
    assert all(t.endswith(" (answered by operators)") for t in lines), lines
