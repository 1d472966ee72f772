"""The hooks the doors call, in the order things happen: what an observer
(the metrics, teaching mode's trace) can rely on."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from sockchat import ChatServerFactory, EchoResponder, Reason
from sockchat._core.reports import Ended, LineRefused, TurnMoved
from sockchat._core.rules import Event
from sockchat._doors.observers import ConversationObserver, Loss, loss_of

PEER = IPv4Address("TCP", "127.0.0.1", 50000)


class Heard(ConversationObserver):
    """Keeps each hook's name and what came with it, in order."""

    def __init__(self, every_turn: bool) -> None:
        self.every_turn = every_turn
        self.heard: list[tuple] = []

    def connected(self, transport, now):
        self.heard.append(("connected", transport.getPeer().port))

    def started(self, info, now):
        self.heard.append(("started", info.id))

    def read(self, data, now):
        self.heard.append(("read", data))

    def reported(self, report):
        if isinstance(report, TurnMoved):
            self.heard.append(("moved", report.event))
        elif isinstance(report, LineRefused):
            self.heard.append(("refused", report.code))
        elif isinstance(report, Ended):
            self.heard.append(("ended", report.code))

    def wrote(self, data, now):
        self.heard.append(("wrote", data[:6]))

    def handled(self, now):
        self.heard.append(("handled",))

    def peer_closed(self, now):
        self.heard.append(("peer closed",))

    def closing(self, reason, now):
        self.heard.append(("closing", reason))

    def lost(self, loss, reason, now):
        self.heard.append(("lost", loss))


def converse(every_turn: bool, *lines: bytes, half_close: bool = False) -> list:
    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    observer = Heard(every_turn)
    factory.observe(lambda door, cid: observer)
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    for line in lines:
        proto.dataReceived(line)
    if half_close:
        proto.readConnectionLost()
    proto.connectionLost(Failure(ConnectionDone()))
    return observer.heard


def test_an_observer_of_every_turn_hears_it_all_in_order():
    heard = converse(True, b"hi\n", b"q\n")
    assert heard == [
        ("connected", 50000),
        ("started", 1),
        ("moved", Event.START),
        ("wrote", b"!info "),  # the welcome
        ("handled",),
        ("read", b"hi\n"),
        ("moved", Event.LINE),
        ("moved", Event.ANSWER),
        ("wrote", b"hi\n"),
        ("handled",),
        ("read", b"q\n"),
        ("moved", Event.BYE),
        ("wrote", b"!bye q"),
        ("closing", Reason.QUIT),
        ("handled",),
        ("moved", Event.LOST),
        ("ended", "quit"),
        ("handled",),
        ("lost", Loss.DONE),
    ]


def test_an_observer_of_the_rest_hears_nothing_on_a_turn():
    heard = converse(False, b"hi\n", b"hi\n", b"one\n\xff\n", half_close=True)
    assert heard == [
        ("connected", 50000),
        ("started", 1),
        ("refused", "invalid-utf8"),
        ("peer closed",),
        ("closing", Reason.END_OF_INPUT),
        ("ended", "end-of-input"),
        ("lost", Loss.DONE),
    ]


def test_a_connection_lost_in_its_tls_handshake_is_connected_then_lost():
    factory = ChatServerFactory(EchoResponder(), clock=Clock())
    observer = Heard(True)
    factory.observe(lambda door, cid: observer)
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    directlyProvides(transport, ISSLTransport)  # its handshake is under way
    proto.makeConnection(transport)
    proto.connectionLost(Failure(ConnectionLost()))
    assert observer.heard == [("connected", 50000), ("lost", Loss.LOST)]
    assert factory.conversations == {}


def test_how_a_connection_was_lost_is_told_apart():
    from twisted.internet.error import ConnectionAborted

    assert loss_of(Failure(ConnectionDone())) is Loss.DONE
    assert loss_of(Failure(ConnectionLost())) is Loss.LOST
    assert loss_of(Failure(ConnectionAborted())) is Loss.ABORTED
    assert loss_of(Failure(ValueError("tls"))) is Loss.ERROR
