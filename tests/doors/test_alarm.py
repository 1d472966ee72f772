"""The idle watch's alarm: a timerfd the reactor does not poll (issue 21).

With the real reactor on Linux, ``Alarm`` arms a ``timerfd`` and leaves
no ``callLater`` pending (a pending call costs every reactor pass: see
docs/performance.md, "What is left at C=1"); with a test's ``Clock`` it
is the ``callLater`` it always was.  Both fire once, when due, move when
set again, and stop when cancelled.
"""

from __future__ import annotations

import os
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from sockchat import ChatServerFactory, EchoResponder
from sockchat._doors.alarm import Alarm, timerfd_available

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="timerfd is Linux's"
)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@linux_only
def test_linux_has_a_timerfd_and_the_reactor_is_given_one():
    assert timerfd_available()
    assert Alarm(reactor, lambda: None).uses_timerfd
    assert not Alarm(Clock(), lambda: None).uses_timerfd


@linux_only
@pytest_twisted.ensureDeferred
async def test_the_timerfd_fires_once_when_due_with_no_call_pending():
    fired: list[float] = []
    done: Deferred[None] = Deferred()

    def fire() -> None:
        fired.append(time.monotonic())
        done.callback(None)

    before = open_fds()
    alarm = Alarm(reactor, fire)
    start = time.monotonic()
    alarm.set(0.2)
    assert open_fds() == before + 1
    assert not [c for c in reactor.getDelayedCalls() if "Alarm" in repr(c)]
    await done
    assert 0.19 <= fired[0] - start < 2.0
    await deferLater(reactor, 0.3, lambda: None)
    assert len(fired) == 1, "it fires once per set"
    alarm.cancel()
    assert open_fds() == before


@linux_only
@pytest_twisted.ensureDeferred
async def test_set_again_moves_it_and_cancel_stops_it():
    fired: list[str] = []
    alarm = Alarm(reactor, lambda: fired.append("fired"))
    alarm.set(0.1)
    alarm.set(0.5)  # later: not at 0.1
    await deferLater(reactor, 0.3, lambda: None)
    assert fired == []
    alarm.set(0.05)  # sooner
    await deferLater(reactor, 0.3, lambda: None)
    assert fired == ["fired"]
    alarm.set(0.1)
    alarm.cancel()
    await deferLater(reactor, 0.3, lambda: None)
    assert fired == ["fired"]


def test_with_a_clock_it_is_a_call_later():
    clock = Clock()
    fired: list[float] = []
    alarm = Alarm(clock, lambda: fired.append(clock.seconds()))
    alarm.set(5)
    alarm.set(3)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(3)
    assert fired == [3.0]
    alarm.set(-1)  # overdue: at once, on the next pass
    clock.advance(0)
    assert fired == [3.0, 3.0]
    alarm.set(1)
    alarm.cancel()
    clock.advance(2)
    assert fired == [3.0, 3.0]
    assert clock.getDelayedCalls() == []


@linux_only
@pytest_twisted.ensureDeferred
async def test_the_idle_watch_closes_an_idle_conversation_on_the_real_reactor():
    """The whole path: a conversation idle past --idle-timeout is told so
    and closed, by the timerfd, with no reactor call pending for it; the
    descriptor is given back once nobody is watched."""
    before = open_fds()
    factory = ChatServerFactory(EchoResponder(), idle_timeout=0.3)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"hello\n")
    assert not [c for c in reactor.getDelayedCalls() if "_fire" in repr(c)]
    assert open_fds() == before + 1
    await deferLater(reactor, 1.0, lambda: None)
    assert b"!bye idle-timeout" in transport.value()
    assert transport.disconnecting
    assert open_fds() == before, "nobody left to watch: no descriptor held"
    proto.connectionLost()
    factory.close_all()
