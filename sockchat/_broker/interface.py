"""The broker, as the rest of sockchat sees it: ``IBroker``.

Several sockchat processes (instances, operators, workers) meet at a
broker.  What they ask of it is this interface, in roles:

- the link (``IBrokerLink``): is it there, since when, and is it ours;
- presence (``IPresence``): instances and consumers say they are alive,
  and everyone learns who is (``census``);
- inboxes (``IInbox``): messages to one instance, read in batches;
- the work queues (``IWorkQueue``): one per consumer group (``operators``,
  ``workers``); each entry goes to one consumer, which holds it until it
  finishes it or hands it back; entries of a consumer that stopped
  touching them are taken by another;
- the directory (``IDirectory``): the clients of each instance, who holds
  which conversation between its lines, and who holds which queued line;
- histories (``IHistory``): each conversation's lines and answers so far,
  bounded, living as long as its instance's directory;
- pairing (``IPairing``): the pair mode's waiting list.

Two implementations: ``RedisBroker`` (``sockchat._broker.redisbroker``),
where every Redis command and script lives, and ``MemoryBroker``
(``sockchat._broker.memory``), the same in one process.  The instance
(``sockchat._broker.instance``), the consumers (``sockchat._broker.consumer``)
and the pairs (``sockchat._broker.pairs``) use only this interface; their
logic is tested on the memory one, and the Redis one is held to the same
contract against a real redis-server.

Every method returns a Deferred.  It fails with ``BrokerUnavailable`` when
the broker cannot be reached (or is lost while the call waits): the caller
says so once and tries again when ``when_up`` fires.  Messages are bytes
of the broker protocol (``sockchat._broker.wire``); the broker never reads
them, except a pair entry's ``instance``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from sockchat._broker.errors import BrokerRefused, BrokerUnavailable, NotReplicated

__all__ = [
    "BROKER_FOR_CLIENTS",
    "BrokerRefused",
    "BrokerUnavailable",
    "Census",
    "ClientRecord",
    "ConsumerSeen",
    "IBroker",
    "IBrokerLink",
    "IDirectory",
    "IHistory",
    "IInbox",
    "IPairing",
    "IPresence",
    "IWorkQueue",
    "Kept",
    "NotReplicated",
    "QueuedEntry",
    "Taken",
    "WorkEntry",
    "quietly",
    "unless_unavailable",
]

log = Logger(namespace="sockchat.broker")

#: What a client's notice calls the broker.  Its address (hosts, ports, the
#: user name, the master's name) is for the logs: whoever connects has no
#: use for it, and need not learn where the Redis of this deployment is.
BROKER_FOR_CLIENTS = "the broker"


# -- Values ---------------------------------------------------------------------


@frozen
class WorkEntry:
    """One entry of a work queue: its id (``1718000000000-0``: oldest
    first), and the message (broker protocol bytes)."""

    entry: str
    data: bytes


@frozen
class QueuedEntry:
    """An entry of a work queue as the directory sees it: *holder* is the
    consumer that holds it now, None while it waits for one (never taken,
    handed back, or left by a consumer that stopped touching it)."""

    entry: str
    data: bytes
    holder: str | None


@frozen
class Taken:
    """What ``take_entry`` found: the entry, now held by the caller; or
    the consumer that holds it (*holder*); or neither: it is gone."""

    entry: WorkEntry | None = None
    holder: str | None = None


@frozen
class ConsumerSeen:
    """A consumer (an operator or a worker) as it says at its heartbeat.

    *name* is unique (``host-pid-random``); *display* is the name people
    see (an operator's ``--name``); *until* is when it counts as gone if
    it has not beaten again (seconds, its own clock); *greets*: its
    responder speaks first (a worker whose responder has hooks).
    """

    name: str
    display: str
    until: float
    greets: bool = False


@frozen
class ClientRecord:
    """One client of one instance, in the directory.

    *conv* is the instance's conversation id, *peer* the client's address,
    *responder* the queue or mode that serves it (``operators``,
    ``workers``, ``pair``), *partner* its pair partner (``i2/5``) if any,
    *holder* the consumer that holds the conversation between its lines
    (an operator at a desk), if any.
    """

    conv: int
    peer: str
    responder: str
    partner: str | None = None
    holder: str | None = None


@frozen
class Kept:
    """One item of a conversation's history: its number (counted from 1,
    never given twice in one conversation) and its bytes."""

    n: int
    data: bytes


@frozen
class Census:
    """Who is alive, as of one look: the instances (by name), and the live
    consumers of each group asked about."""

    instances: frozenset[str] = frozenset()
    consumers: Mapping[str, tuple[ConsumerSeen, ...]] = field(factory=dict)

    def of(self, group: str) -> tuple[ConsumerSeen, ...]:
        return self.consumers.get(group, ())


# -- The roles --------------------------------------------------------------------


class IBrokerLink(Interface):
    """The broker itself: where it is, whether it is there, whether it is
    ours."""

    display = Attribute("The broker's address for logs and messages (no password).")
    up = Attribute("Whether the broker can be reached now (bool).")
    why = Attribute("Why it was last unreachable, in a few words (str).")

    def on_change(callback: Callable[[bool], object]) -> None:
        """Call *callback* with ``False`` once when the broker is lost, and
        ``True`` once when it is back."""

    def when_up() -> Deferred[None]:
        """Fires when every connection the broker needs is up (at once if
        they are), or when it is closed."""

    def check_protocol() -> Deferred[None]:
        """Fails with ``BrokerRefused`` (one line) if the broker holds
        another broker protocol; the first process to ask writes ours."""

    def close() -> Deferred[None]:
        """Close for good: what waits fails with ``BrokerUnavailable``."""


class IPresence(Interface):
    """Who is alive: instances keep a heartbeat, consumers too."""

    def register_instance(about: Mapping[str, Any]) -> Deferred[str]:
        """A new instance's name (``i1``, ``i2``... never given twice),
        alive from now for one heartbeat's life."""

    def beat_instance(name: str, about: Mapping[str, Any]) -> Deferred[None]:
        """Instance *name* is alive for another heartbeat's life (its
        directory and inbox live as long)."""

    def leave_instance(name: str) -> Deferred[None]:
        """Instance *name* is gone: its heartbeat and directory go now."""

    def instance_alive(name: str) -> Deferred[bool]:
        """Whether instance *name* is alive now (for one that the last
        ``census`` did not name)."""

    def beat_consumer(group: str, seen: ConsumerSeen) -> Deferred[None]:
        """Consumer *seen* of *group* is alive until ``seen.until``."""

    def leave_consumer(group: str, name: str) -> Deferred[None]:
        """Consumer *name* of *group* is gone."""

    def census(groups: Sequence[str]) -> Deferred[Census]:
        """The live instances, and the live consumers of *groups*.  Those
        found dead are swept: an instance's directory, a consumer's
        record."""


class IInbox(Interface):
    """Each instance's inbox: answers, notices, pair relays, in order."""

    def post(instance: str, messages: Sequence[bytes]) -> Deferred[None]:
        """Put *messages*, in order, at the end of *instance*'s inbox.  An
        inbox nobody reads goes after ``Timings.inbox_ttl``."""

    def next_messages(instance: str, wait: float, most: int) -> Deferred[list[bytes]]:
        """Take the messages waiting in *instance*'s inbox (up to *most*),
        oldest first; if there are none, wait up to *wait* seconds for the
        first (``[]`` if none came)."""


class IWorkQueue(Interface):
    """One queue per consumer group; each entry goes to one consumer."""

    def open_queue(group: str) -> Deferred[None]:
        """Make *group*'s queue, if it is not there (a broker that restarted
        empty has none)."""

    def enqueue(group: str, messages: Sequence[bytes]) -> Deferred[list[str]]:
        """Add *messages* to *group*'s queue, in order, all at once: a
        consumer that waits for entries is given them together.  The new
        entries' ids, in order.

        With a broker that copies to replicas and was asked to wait for
        them (``?wait=N``), it fires only once they have the entries, and
        fails with ``NotReplicated`` (the entries deleted, as far as can
        be) if they did not within the time allowed."""

    def enqueue_held(group: str, message: bytes, holder: str) -> Deferred[str]:
        """Add *message* to *group*'s queue, held by consumer *holder* from
        the start, as if it had taken it with ``take_entry``: no other
        consumer is given it, unless *holder* stops touching it.  The new
        entry's id.  (Entries nobody had taken yet, older than it, are
        handed back, as ``take_entry`` does.)  With ``?wait=N``, as
        ``enqueue``: it fires once the replicas have it, or fails with
        ``NotReplicated``."""

    def follow(
        group: str, after: str, wait: float, most: int
    ) -> Deferred[list[WorkEntry]]:
        """The entries of *group*'s queue added after entry *after*
        (``0-0``: from the first), oldest first (up to *most*), whoever
        holds them, taking none; if there are none, wait up to *wait*
        seconds for one (``[]`` if none came).  An entry deleted is not
        given."""

    def take(
        group: str, consumer: str, most: int, wait: float
    ) -> Deferred[list[WorkEntry]]:
        """Entries nobody has taken yet, oldest first (up to *most*), now
        held by *consumer*; if there are none, wait up to *wait* seconds
        for one (``[]`` if none came)."""

    def take_abandoned(
        group: str, consumer: str, idle: float, most: int
    ) -> Deferred[list[WorkEntry]]:
        """Held entries that nobody touched for *idle* seconds (their
        consumer died, or handed them back), oldest first (up to *most*),
        now held by *consumer*."""

    def take_entry(
        group: str, consumer: str, entry: str, idle: float
    ) -> Deferred[Taken]:
        """Take one given entry for *consumer*, whether it waits in the
        queue or was abandoned (untouched for *idle* seconds); not one that
        another consumer holds (``Taken.holder`` names it)."""

    def touch(group: str, consumer: str, entries: Sequence[str]) -> Deferred[set[str]]:
        """*consumer* still holds *entries*; the ones still in the queue
        (the others were deleted: their clients left or gave up)."""

    def finish(
        group: str,
        entries: Sequence[str],
        posts: Sequence[tuple[str, bytes]] = (),
    ) -> Deferred[None]:
        """Post each ``(instance, message)`` of *posts* to its inbox, in
        order, and then delete *entries* from the queue."""

    def hand_back(group: str, consumer: str, entries: Sequence[str]) -> Deferred[None]:
        """*consumer* gives *entries* back: anyone may take them at once
        (``take_abandoned``)."""

    def still_there(group: str, entries: Sequence[str]) -> Deferred[set[str]]:
        """Which of *entries* are still in the queue (a broker that
        restarted without its data lost the others)."""


class IDirectory(Interface):
    """Who is where: the clients of each instance, and who holds what."""

    def set_client(instance: str, client: ClientRecord) -> Deferred[None]:
        """Add or replace *client* among *instance*'s clients."""

    def remove_client(instance: str, conv: int) -> Deferred[None]:
        """Client *conv* of *instance* left."""

    def has_client(instance: str, conv: int) -> Deferred[bool]:
        """Whether client *conv* of *instance* is still there."""

    def clients(instances: Sequence[str]) -> Deferred[dict[str, list[ClientRecord]]]:
        """The clients of each of *instances*, by instance."""

    def queue_view(group: str, idle: float) -> Deferred[list[QueuedEntry]]:
        """Every entry of *group*'s queue, oldest first, with the consumer
        that holds it (None if it waits: a holder that did not touch it for
        *idle* seconds does not count)."""


class IHistory(Interface):
    """Each conversation's history: both sides' lines and what happened,
    as items (bytes without a newline, which the broker does not read).

    A history keeps its last ``HISTORY_ITEMS`` items, and its last
    ``HISTORY_BYTES`` bytes of items (its latest item is kept whole, however
    long).  It lives as long as its instance's directory: it goes when the
    instance leaves or stops beating, or when it is dropped.
    """

    def add_history(instance: str, conv: int, items: Sequence[bytes]) -> Deferred[int]:
        """Add *items*, in order, to conversation *conv* of *instance*; the
        number given to the first."""

    def history(instance: str, conv: int) -> Deferred[list[Kept]]:
        """The items kept, oldest first."""

    def drop_history(instance: str, conv: int) -> Deferred[None]:
        """The conversation is over: its history goes."""


class IPairing(Interface):
    """Pair mode's waiting list: clients of every instance wait in one."""

    def pair_or_wait(entry: bytes, front: bool) -> Deferred[bytes | None]:
        """Take the first waiting entry whose instance is alive (dropping
        those of dead instances, and *entry* itself); or, if none is left,
        put *entry* in the list (at its head if *front*) and give None.

        An entry is JSON naming its ``instance``; one that is not is
        dropped."""

    def start_waiting(entry: bytes, front: bool) -> Deferred[None]:
        """Put *entry* in the waiting list (at its head if *front*), taking
        nobody, once: an entry already there moves.  Pair mode's waiting
        clients all speak first, so one who goes back to the list must not
        take another."""

    def stop_waiting(entry: bytes) -> Deferred[None]:
        """Take *entry* out of the waiting list."""

    def waiting() -> Deferred[list[bytes]]:
        """The waiting list's entries, first first."""


class IBroker(
    IBrokerLink, IPresence, IInbox, IWorkQueue, IDirectory, IHistory, IPairing
):
    """Everything a sockchat process asks of the broker."""


def quietly(d: Deferred[Any]) -> Deferred[Any]:
    """Let *d* fail silently if the broker is unavailable (its loss is
    said once, elsewhere); log any other failure."""
    return d.addErrback(unless_unavailable)


def unless_unavailable(failure: Failure) -> None:
    """An errback: log *failure*, unless it is the broker's loss (which is
    said once, elsewhere)."""
    if not failure.check(BrokerUnavailable):
        log.failure("a broker call failed", failure)
