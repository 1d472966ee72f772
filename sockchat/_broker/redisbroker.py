"""The broker on Redis: ``RedisBroker``, the ``IBroker`` of ``--broker URL``.

Every Redis command and Lua script of sockchat's broker is in this module
(the client's own hello, ``AUTH``/``SELECT``/``PING``, is in
``sockchat._broker.redis``); a test checks that no other module names one.
What lives where (``P`` is the key prefix, ``sockchat``):

- ``P:protocol``: the broker protocol (``SET NX`` by the first process);
  ``P:instance-counter``: instance names (``INCR``);
- ``P:instance:NAME``: an instance's heartbeat, a JSON string with a TTL
  (``SET PX``); ``P:instances``: the set of names that may be alive (the
  dead are swept at a census);
- ``P:clients:NAME``: an instance's directory, a hash of JSON records by
  conversation id, living as long as the heartbeat;
- ``P:history:NAME``: its conversations' histories, a hash by conversation
  id (``HISTORY_ADD`` appends and trims), living as long as the heartbeat;
- ``P:inbox:NAME``: an instance's inbox, a list (``RPUSH`` and
  ``PEXPIRE`` in ``POST``, read with ``BLMPOP ... COUNT``: every message
  waiting, at once);
- ``P:work:GROUP``: a group's work queue, a stream read in one consumer
  group (``XREADGROUP COUNT n``), added to with ``ENQUEUE`` (the lines of
  one turn in one command); held entries are touched with one
  ``XCLAIM ... JUSTID``, abandoned ones taken with ``XAUTOCLAIM``, a given
  one with ``TAKE_ENTRY``, a new one held from the start with
  ``ENQUEUE_HELD``; a batch's answers are posted and its entries
  acknowledged and deleted with ``POST`` (one command for the batch); a
  desk follows it with ``XREAD BLOCK``;
- ``P:consumers:GROUP``: a hash of the group's consumers, each a JSON
  record with the time it counts as gone;
- ``P:pair:waiting``: pair mode's waiting list (``POP_OR_WAIT``).

Commands go out as they are called (the client pipelines them: a batch
costs one round trip); a call that needs several sends them together.  A
reply that is an error is ``BrokerRefused``, with Redis's text.

``register_blocking`` runs before the reactor, on a plain socket, so that
``twistd`` stops with one line when the broker cannot be used;
``connect`` makes the connections a consumer process needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from attrs import field, frozen
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockchat._broker import blocking
from sockchat._broker.blocking import BlockingError, BlockingRefused
from sockchat._broker.interface import (
    BrokerRefused,
    BrokerUnavailable,
    Census,
    ClientRecord,
    ConsumerSeen,
    IBroker,
    Kept,
    QueuedEntry,
    Taken,
    WorkEntry,
    quietly,
)
from sockchat._broker.redis import (
    BrokerAddress,
    IRedis,
    RedisClient,
    RedisError,
    parse_broker_url,
)
from sockchat._broker.wire import (
    HISTORY_BYTES,
    HISTORY_ITEMS,
    PROTOCOL,
    Keys,
    Timings,
)

__all__ = [
    "ENQUEUE_HELD",
    "HISTORY_ADD",
    "POP_OR_WAIT",
    "SCRIPTS",
    "TAKE_ENTRY",
    "RedisBroker",
    "Script",
    "connect",
    "register_blocking",
    "run_script",
]

log = Logger(namespace="sockchat.broker")

Arg = str | bytes | int | float

#: ``XAUTOCLAIM`` calls per look for abandoned entries, at most.
SCAN_ROUNDS = 50
#: The idle time (ms) a handed-back entry is given: anyone's next
#: ``XAUTOCLAIM`` takes it.
HANDED_BACK_IDLE = 1_000_000_000
#: Entries ``queue_view`` shows at most.
VIEW_MOST = 1000
#: Seconds to reach the broker at start before giving up.
CONNECT_TIMEOUT = 5.0


# -- Lua ------------------------------------------------------------------------


@frozen
class Script:
    """A Lua script and the SHA1 that names it in ``EVALSHA``."""

    name: str
    lua: str
    sha1: str = field(init=False)

    @sha1.default
    def _sha1(self) -> str:
        return hashlib.sha1(self.lua.encode("utf-8")).hexdigest()


def run_script(
    redis: IRedis, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
) -> Deferred[Any]:
    """Run *script*: ``EVALSHA``, then ``EVAL`` if the server does not have
    it cached (``NOSCRIPT``: it restarted, or never saw it)."""
    d = redis.command("EVALSHA", script.sha1, len(keys), *keys, *args)

    def not_cached(failure: Failure) -> Deferred[Any] | Failure:
        if failure.check(RedisError) and str(failure.value).startswith("NOSCRIPT"):
            return redis.command("EVAL", script.lua, len(keys), *keys, *args)
        return failure

    return d.addErrback(not_cached)


#: Pairing: take the first waiting client whose instance is alive, or wait.
#:
#: KEYS[1] is the waiting list.  ARGV[1] is this client's entry, a JSON
#: object with "instance"; ARGV[2] the prefix of the instances' heartbeat
#: keys (``sockchat:instance:``); ARGV[3] ``front`` or ``back``.  Entries
#: are popped from the head until one whose instance's heartbeat key
#: exists, which is returned.  Popped entries of dead instances, entries
#: that are not such JSON objects, and an entry equal to ARGV[1] (a client
#: is never its own partner) are dropped.  If none is left, ARGV[1] is
#: pushed (at the head for ``front``: a client whose partner left before a
#: word keeps its place) and the reply is nil.
POP_OR_WAIT = Script(
    name="pop_or_wait",
    lua="""\
if ARGV[3] ~= 'front' and ARGV[3] ~= 'back' then
  return redis.error_reply('ERR pop_or_wait: ARGV[3] must be front or back')
end
while true do
  local entry = redis.call('LPOP', KEYS[1])
  if not entry then break end
  if entry ~= ARGV[1] then
    local ok, decoded = pcall(cjson.decode, entry)
    if ok and type(decoded) == 'table' and type(decoded['instance']) == 'string'
        and redis.call('EXISTS', ARGV[2] .. decoded['instance']) == 1 then
      return entry
    end
  end
end
if ARGV[3] == 'front' then
  redis.call('LPUSH', KEYS[1], ARGV[1])
else
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
return false
""",
)

#: Take one entry of a work queue for a consumer, whether it was taken
#: before (then only if its holder has not touched it for a while) or not:
#: an entry nobody has taken is only reachable through the group's new
#: entries (``>``), so those before it are read too, one by one, and handed
#: back at once, so that anyone's next ``XAUTOCLAIM`` takes them (oldest
#: first).  Shared by ``TAKE_ENTRY`` and ``ENQUEUE_HELD``.
_TAKE = """\
local function before(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
-- Read the group's new entries for me up to wanted, handing back the
-- others; the group is made if it is not there (a broker that restarted
-- empty), with every entry new.
local function reach(stream, group, me, wanted, handed_back)
  while true do
    local read = redis.pcall('XREADGROUP', 'GROUP', group, me, 'COUNT', 1,
                             'STREAMS', stream, '>')
    if type(read) == 'table' and read.err then
      if not string.find(read.err, 'NOGROUP', 1, true) then return read end
      redis.call('XGROUP', 'CREATE', stream, group, '0')
    else
      if not read then return {'gone'} end
      local e = read[1][2][1]
      if e[1] == wanted then return {'taken', e[1], e[2]} end
      redis.call('XCLAIM', stream, group, me, 0, e[1], 'IDLE', handed_back, 'JUSTID')
      if not before(e[1], wanted) then return {'gone'} end
    end
  end
end
local function take(stream, group, me, wanted, idle, handed_back)
  local found = redis.call('XRANGE', stream, wanted, wanted)
  if #found == 0 then return {'gone'} end
  local pending = redis.pcall('XPENDING', stream, group, wanted, wanted, 1)
  if type(pending) == 'table' and pending.err then pending = {} end
  if #pending > 0 then
    if pending[1][2] ~= me and pending[1][3] < tonumber(idle) then
      return {'held', pending[1][2]}
    end
    redis.call('XCLAIM', stream, group, me, 0, wanted, 'JUSTID')
    return {'taken', found[1][1], found[1][2]}
  end
  return reach(stream, group, me, wanted, handed_back)
end
"""

#: Take one given entry of a work queue (an operator's ``/to``, a desk's
#: take).
#:
#: KEYS[1] is the stream.  ARGV: the group, the consumer, the entry, the
#: idle time (ms) past which a holder no longer counts, and the idle time
#: given to entries handed back.  Replies ``{'taken', id, fields}``,
#: ``{'held', consumer}`` or ``{'gone'}``.
TAKE_ENTRY = Script(
    name="take_entry",
    lua=_TAKE + "return take(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])\n",
)

#: Add an entry to a work queue, held by a consumer from the start (the
#: next line of a conversation that an operator holds).
#:
#: KEYS[1] is the stream.  ARGV: the group, the consumer, the message, the
#: idle time given to entries handed back.  Replies the new entry's id.
#: (It costs ``XADD`` and one ``XREADGROUP``, and one ``XCLAIM`` for each
#: entry nobody had taken yet before it.)
ENQUEUE_HELD = Script(
    name="enqueue_held",
    lua=_TAKE
    + """\
local id = redis.call('XADD', KEYS[1], '*', 'm', ARGV[3])
local taken = reach(KEYS[1], ARGV[1], ARGV[2], id, ARGV[4])
if taken.err then return taken end
return id
""",
)

#: Add items to one conversation's history, and keep it within bounds.
#:
#: KEYS[1] is the instance's history hash.  ARGV: the conversation, the
#: most items kept, the most bytes of items kept, the hash's time to live
#: (ms), then the items (bytes without a newline).  A field is the next
#: number, a newline, then one kept item a line, as ``N DATA``; the oldest
#: go first, and the latest is kept whole.  Replies the first item's
#: number.  The hash gets its time to live with a new conversation (it may
#: be new itself); then the instance's heartbeat keeps it alive
#: (``beat_instance``), so that a turn costs ``HGET`` and ``HSET`` only.
HISTORY_ADD = Script(
    name="history_add",
    lua="""\
local value = redis.call('HGET', KEYS[1], ARGV[1])
local next_n, lines, sizes = 1, {}, {}
if value then
  local head, rest = string.match(value, '^(%d+)\\n(.*)$')
  next_n = tonumber(head)
  for line in string.gmatch(rest, '[^\\n]+') do
    lines[#lines + 1] = line
    sizes[#sizes + 1] = #line - string.find(line, ' ', 1, true)
  end
end
local first = next_n
for i = 5, #ARGV do
  lines[#lines + 1] = next_n .. ' ' .. ARGV[i]
  sizes[#sizes + 1] = #ARGV[i]
  next_n = next_n + 1
end
local most, budget, total = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for _, size in ipairs(sizes) do total = total + size end
local start = 1
while #lines - start + 1 > 1 and (#lines - start + 1 > most or total > budget) do
  total = total - sizes[start]
  start = start + 1
end
local kept = table.concat(lines, '\\n', start)
if redis.call('HSET', KEYS[1], ARGV[1], next_n .. '\\n' .. kept) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return first
""",
)

#: Add entries to a work queue, all in one command.
#:
#: KEYS[1] is the stream; ARGV the messages.  Replies with the new ids, in
#: order.  One command rather than an ``XADD`` each: Redis serves a reader
#: that waits on the stream (``XREADGROUP BLOCK``) after each command, so a
#: pipeline of ``XADD``s would give a waiting consumer the first entry
#: alone, and the rest at its next read.
ENQUEUE = Script(
    name="enqueue",
    lua="""\
local ids = {}
for i = 1, #ARGV do
  ids[i] = redis.call('XADD', KEYS[1], '*', 'm', ARGV[i])
end
return ids
""",
)

#: Messages to instances' inboxes, then (a consumer's batch) entries of
#: a work queue deleted: all in one command.
#:
#: KEYS: the inboxes, then the stream if entries are deleted.  ARGV: the
#: inboxes' TTL (ms), the number of inboxes m, then for each inbox in
#: KEYS' order the number of its messages and the messages; then, if the
#: stream is there, the group and the entries.  Each inbox gets an
#: ``RPUSH`` of its messages (a thousand at a time: Lua's stack) and a
#: ``PEXPIRE``; then the entries are acknowledged and deleted (``XACK``,
#: ``XDEL``).  One command rather than two an inbox and two a batch: a
#: batch costs one reply and one Deferred.
POST = Script(
    name="post",
    lua="""\
local m = tonumber(ARGV[2])
local at = 3
for k = 1, m do
  local last = at + tonumber(ARGV[at])
  for i = at + 1, last, 1000 do
    redis.call('RPUSH', KEYS[k], unpack(ARGV, i, math.min(i + 999, last)))
  end
  redis.call('PEXPIRE', KEYS[k], ARGV[1])
  at = last + 1
end
if #KEYS > m then
  local stream, group = KEYS[m + 1], ARGV[at]
  for i = at + 1, #ARGV, 1000 do
    local last = math.min(i + 999, #ARGV)
    redis.call('XACK', stream, group, unpack(ARGV, i, last))
    redis.call('XDEL', stream, unpack(ARGV, i, last))
  end
end
return m
""",
)

#: Every script, by name.
SCRIPTS: dict[str, Script] = {
    s.name: s
    for s in (POP_OR_WAIT, TAKE_ENTRY, ENQUEUE_HELD, HISTORY_ADD, ENQUEUE, POST)
}


# -- Replies --------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _refused(failure: Failure) -> Failure:
    """A Redis error reply, as the interface's ``BrokerRefused``."""
    if failure.check(RedisError):
        return Failure(BrokerRefused(str(failure.value)))
    return failure


def _entry(raw: Any) -> WorkEntry | None:
    """A stream entry ``[id, [field, value, ...]]``; None if deleted."""
    if type(raw) is not list or len(raw) < 2 or not raw[1]:
        return None
    flat = raw[1]
    if len(flat) == 2 and flat[0] == b"m":  # as sockchat writes them: m alone
        data = flat[1]
    else:
        data = dict(zip(flat[::2], flat[1::2], strict=False)).get(b"m", b"")
    entry = raw[0]
    return WorkEntry(
        entry.decode("utf-8", "replace") if type(entry) is bytes else _text(entry),
        data if type(data) is bytes else b"",
    )


def _entries(reply: Any) -> list[WorkEntry]:
    """The entries of an ``XREAD``/``XREADGROUP`` reply for one stream."""
    if not reply:
        return []
    return [e for e in map(_entry, reply[0][1] or ()) if e is not None]


def _client(conv: bytes, value: bytes) -> ClientRecord | None:
    try:
        record = json.loads(value)
        number = int(conv)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    peer, responder, partner, holder = (
        record.get("peer"),
        record.get("responder"),
        record.get("partner"),
        record.get("holder"),
    )
    return ClientRecord(
        number,
        peer if isinstance(peer, str) else "unknown",
        responder if isinstance(responder, str) else "",
        partner if isinstance(partner, str) else None,
        holder if isinstance(holder, str) else None,
    )


def _seen(name: bytes, value: bytes) -> ConsumerSeen | None:
    try:
        record = json.loads(value)
        until = float(record.get("until", 0))
    except (ValueError, UnicodeDecodeError, AttributeError, TypeError):
        return None
    shown = record.get("name")
    return ConsumerSeen(
        _text(name),
        shown if isinstance(shown, str) else _text(name),
        until,
        record.get("greets") is True,
    )


def _json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))


# -- The broker -------------------------------------------------------------------


@implementer(IBroker)
class RedisBroker:
    """``IBroker`` on Redis.

    *commands* carries every command that does not wait; a read that waits
    has a connection of its own: *inbox* for an instance's inbox, *work*
    for a consumer's queue (a process that reads neither needs neither).
    *clock* is for the consumers' records (``ConsumerSeen.until``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        commands: IRedis,
        *,
        inbox: IRedis | None = None,
        work: IRedis | None = None,
        keys: Keys | None = None,
        timings: Timings | None = None,
    ) -> None:
        self._clock = clock
        self._redis = commands
        self._inbox = inbox
        self._work = work
        self.keys = keys or Keys()
        self.timings = timings or Timings()
        self.display = commands.display
        self._callbacks: list[Callable[[bool], object]] = []
        self._up_waiters: list[Deferred[None]] = []
        self._closed = False
        self._groups_made: set[str] = set()
        #: Whether a read that waits is in flight on *work*.
        self._work_waits = False
        commands.on_state = self._state_changed
        for reader in self._readers:
            reader.on_state = self._reader_changed

    @property
    def _readers(self) -> list[IRedis]:
        return [r for r in (self._inbox, self._work) if r is not None]

    @property
    def _clients(self) -> list[IRedis]:
        return [self._redis, *self._readers]

    def _command(self, *args: Arg) -> Deferred[Any]:
        return self._redis.command(*args).addErrback(_refused)

    def _all(self, replies: list[Deferred[Any]]) -> Deferred[list[Any]]:
        """Every reply; the first failure if any (the others are consumed)."""
        together = gatherResults(replies, consumeErrors=True)

        def first(failure: Failure) -> Failure:
            inner = failure.value
            sub = getattr(inner, "subFailure", None)
            return sub if isinstance(sub, Failure) else failure

        return together.addErrback(first)

    # -- IBrokerLink -------------------------------------------------------------

    @property
    def up(self) -> bool:
        return bool(self._redis.connected)

    @property
    def why(self) -> str:
        return str(self._redis.why)

    def on_change(self, callback: Callable[[bool], object]) -> None:
        self._callbacks.append(callback)

    def _state_changed(self, connected: bool) -> None:
        for callback in list(self._callbacks):
            try:
                callback(connected)
            except Exception:
                log.failure("a broker state callback failed")
        self._reader_changed(connected)

    def _reader_changed(self, connected: bool) -> None:
        if self._closed or all(c.connected for c in self._clients):
            waiters, self._up_waiters = self._up_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_up(self) -> Deferred[None]:
        if self._closed or all(c.connected for c in self._clients):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._up_waiters.append(waiter)
        return waiter

    def check_protocol(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._check_protocol())

    async def _check_protocol(self) -> None:
        await self._command("SET", self.keys.protocol, str(PROTOCOL), "NX")
        theirs = _text(await self._command("GET", self.keys.protocol))
        if theirs != str(PROTOCOL):
            raise BrokerRefused(
                f"the broker at {self.display} speaks broker protocol {theirs}; "
                f"this sockchat speaks {PROTOCOL}: run the same sockchat version "
                "everywhere"
            )

    def close(self) -> Deferred[None]:
        self._closed = True
        self._reader_changed(False)
        return Deferred.fromCoroutine(self._close())

    async def _close(self) -> None:
        for client in reversed(self._clients):
            await client.stop()

    # -- IPresence ---------------------------------------------------------------

    def register_instance(self, about: Mapping[str, Any]) -> Deferred[str]:
        async def register() -> str:
            number = await self._command("INCR", self.keys.instance_counter)
            name = f"i{number}"
            await self.beat_instance(name, about)
            return name

        return Deferred.fromCoroutine(register())

    def beat_instance(self, name: str, about: Mapping[str, Any]) -> Deferred[None]:
        ttl = int(self.timings.heartbeat_ttl * 1000)
        record = _json({"v": PROTOCOL, "name": name, **about})
        return self._done(
            self._command("SET", self.keys.instance(name), record, "PX", ttl),
            self._command("SADD", self.keys.instances, name),
            self._command("PEXPIRE", self.keys.clients(name), ttl),
            self._command("PEXPIRE", self.keys.history(name), ttl),
        )

    def _done(self, *replies: Deferred[Any]) -> Deferred[None]:
        return self._all(list(replies)).addCallback(lambda _: None)

    def leave_instance(self, name: str) -> Deferred[None]:
        keys = self.keys
        return self._done(
            self._command(
                "DEL", keys.instance(name), keys.clients(name), keys.history(name)
            ),
            self._command("SREM", keys.instances, name),
        )

    def instance_alive(self, name: str) -> Deferred[bool]:
        return self._command("EXISTS", self.keys.instance(name)).addCallback(bool)

    def beat_consumer(self, group: str, seen: ConsumerSeen) -> Deferred[None]:
        record = _json(
            {
                "v": PROTOCOL,
                "name": seen.display,
                "until": seen.until,
                "greets": seen.greets,
            }
        )
        return self._done(
            self._command("HSET", self.keys.consumers(group), seen.name, record)
        )

    def leave_consumer(self, group: str, name: str) -> Deferred[None]:
        return self._done(self._command("HDEL", self.keys.consumers(group), name))

    def census(self, groups: Sequence[str]) -> Deferred[Census]:
        return Deferred.fromCoroutine(self._census(list(groups)))

    async def _census(self, groups: list[str]) -> Census:
        keys = self.keys
        first = await self._all(
            [
                self._command("SMEMBERS", keys.instances),
                *(self._command("HGETALL", keys.consumers(g)) for g in groups),
            ]
        )
        names = sorted(_text(n) for n in first[0] or [])
        beats = (
            await self._command("MGET", *(keys.instance(n) for n in names))
            if names
            else []
        )
        alive = frozenset(n for n, beat in zip(names, beats, strict=True) if beat)
        dead = [n for n in names if n not in alive]
        if dead:
            quietly(self._command("SREM", keys.instances, *dead))
            gone = [key for n in dead for key in (keys.clients(n), keys.history(n))]
            quietly(self._command("DEL", *gone))
        now = self._clock.seconds()
        live: dict[str, tuple[ConsumerSeen, ...]] = {}
        for group, flat in zip(groups, first[1:], strict=True):
            flat = flat or []
            seen = [_seen(n, v) for n, v in zip(flat[::2], flat[1::2], strict=False)]
            gone = [
                _text(n)
                for n, s in zip(flat[::2], seen, strict=False)
                if s is None or s.until <= now
            ]
            if gone:
                quietly(self._command("HDEL", keys.consumers(group), *gone))
            live[group] = tuple(
                sorted(
                    (s for s in seen if s is not None and s.until > now),
                    key=lambda s: s.name,
                )
            )
        return Census(alive, live)

    # -- IInbox ------------------------------------------------------------------

    def post(self, instance: str, messages: Sequence[bytes]) -> Deferred[None]:
        if not messages:
            return succeed(None)
        return self._post(self._redis, [(instance, m) for m in messages])

    def _post(
        self,
        redis: IRedis,
        posts: Sequence[tuple[str, bytes]],
        group: str = "",
        entries: Sequence[str] = (),
    ) -> Deferred[None]:
        """*posts*, then *entries* of *group* deleted, in one ``POST``."""
        by_instance: dict[str, list[bytes]] = {}
        for instance, message in posts:
            by_instance.setdefault(instance, []).append(message)
        keys = [self.keys.inbox(instance) for instance in by_instance]
        args: list[Arg] = [int(self.timings.inbox_ttl * 1000), len(keys)]
        for messages in by_instance.values():
            args.append(len(messages))
            args += messages
        if entries:
            keys.append(self.keys.work(group))
            args.append(group)
            args += entries
        return run_script(redis, POST, keys, args).addCallbacks(_nothing, _refused)

    def next_messages(
        self, instance: str, wait: float, most: int
    ) -> Deferred[list[bytes]]:
        key = self.keys.inbox(instance)
        if wait <= 0:
            reply = self._command("LMPOP", 1, key, "LEFT", "COUNT", most)
        else:
            reply = self._reader(self._inbox, "inbox").command(
                "BLMPOP", _seconds(wait), 1, key, "LEFT", "COUNT", most
            )
            reply.addErrback(_refused)
        return reply.addCallback(lambda r: list(r[1]) if r else [])

    def _reader(self, reader: IRedis | None, what: str) -> IRedis:
        if reader is None:
            raise RuntimeError(f"this RedisBroker was made without a {what} reader")
        return reader

    # -- IWorkQueue ----------------------------------------------------------------

    def open_queue(self, group: str) -> Deferred[None]:
        made = self._command(
            "XGROUP", "CREATE", self.keys.work(group), group, "0", "MKSTREAM"
        )

        def made_already(failure: Failure) -> Failure | None:
            if failure.check(BrokerRefused) and str(failure.value).startswith(
                "BUSYGROUP"
            ):
                return None
            return failure

        return made.addCallbacks(lambda _: None, made_already)

    def enqueue(self, group: str, messages: Sequence[bytes]) -> Deferred[list[str]]:
        if not messages:
            return succeed([])
        return self._replicated(group, ENQUEUE, messages)

    def enqueue_held(self, group: str, message: bytes, holder: str) -> Deferred[str]:
        args = (group, holder, message, HANDED_BACK_IDLE)
        held = self._replicated(group, ENQUEUE_HELD, args)
        return held.addCallback(lambda ids: ids[0])

    def _replicated(
        self, group: str, script: Script, args: Sequence[Arg], cached: bool = True
    ) -> Deferred[list[str]]:
        """Run *script*, which adds entries to *group*'s queue and replies
        with their id (or a list of ids), and give the ids once the
        replicas asked for have them (``WAIT``, in the same write).  If the
        replicas fall short, the entries are acknowledged and deleted (as
        far as the broker lets us) and the call fails as unavailable."""
        stream = self.keys.work(group)
        run = ("EVALSHA", script.sha1) if cached else ("EVAL", script.lua)
        # At once: an instance enqueues at the end of a turn (callLater(0)).
        added = self._redis.command_now(*run, 1, stream, *args)
        safe = self._redis.replicated()
        done: Deferred[list[str]] = Deferred()

        def added_now(reply: Any) -> None:
            ids = [_text(i) for i in (reply if isinstance(reply, list) else [reply])]

            def short(failure: Failure) -> None:
                quietly(self._command("XACK", stream, group, *ids))
                quietly(self._command("XDEL", stream, *ids))
                done.errback(failure)

            safe.addCallbacks(lambda _: done.callback(ids), short)

        def not_added(failure: Failure) -> None:
            safe.addErrback(lambda _: None)  # the write's failure says it
            if (
                cached
                and failure.check(RedisError)
                and str(failure.value).startswith("NOSCRIPT")
            ):
                self._replicated(group, script, args, cached=False).chainDeferred(done)
            else:
                done.errback(_refused(failure))

        added.addCallbacks(added_now, not_added)
        return done

    def follow(
        self, group: str, after: str, wait: float, most: int
    ) -> Deferred[list[WorkEntry]]:
        block = ("BLOCK", int(wait * 1000)) if wait > 0 else ()
        reader = self._reader(self._work, "work") if block else self._redis
        read = reader.command(
            "XREAD", "COUNT", most, *block, "STREAMS", self.keys.work(group), after
        )

        return read.addCallbacks(_entries, _refused)

    def take(
        self, group: str, consumer: str, most: int, wait: float
    ) -> Deferred[list[WorkEntry]]:
        # Callbacks rather than a coroutine: this is every batch's read.
        block = ("BLOCK", int(wait * 1000)) if wait > 0 else ()
        reader = self._reader(self._work, "work") if block else self._redis
        stream = self.keys.work(group)
        args = ("XREADGROUP", "GROUP", group, consumer, "COUNT", most, *block)

        def read() -> Deferred[Any]:
            self._work_waits = bool(block)
            return reader.command(*args, "STREAMS", stream, ">").addBoth(read_now)

        def read_now(result: Any) -> Any:
            self._work_waits = False
            return result

        def no_group(failure: Failure) -> Deferred[list[WorkEntry]] | Failure:
            if not failure.check(RedisError) or "NOGROUP" not in str(failure.value):
                return _refused(failure)
            # The broker restarted empty: no queue, no group.
            log.info("the {group} queue is gone; making it again", group=group)
            again = self.open_queue(group).addCallback(lambda _: read())
            return again.addCallbacks(_entries, _no_group_again)

        return read().addCallbacks(_entries, no_group)

    def take_abandoned(
        self, group: str, consumer: str, idle: float, most: int
    ) -> Deferred[list[WorkEntry]]:
        return Deferred.fromCoroutine(self._take_abandoned(group, consumer, idle, most))

    async def _take_abandoned(
        self, group: str, consumer: str, idle: float, most: int
    ) -> list[WorkEntry]:
        taken: list[WorkEntry] = []
        cursor: bytes | str = "0-0"
        for _ in range(SCAN_ROUNDS):
            try:
                reply = await self._redis.command(
                    "XAUTOCLAIM",
                    self.keys.work(group),
                    group,
                    consumer,
                    int(idle * 1000),
                    cursor,
                    "COUNT",
                    most - len(taken),
                )
            except RedisError as e:
                if "NOGROUP" in str(e):
                    return taken  # nothing was held: nothing was abandoned
                raise BrokerRefused(str(e)) from None
            cursor = reply[0]
            taken += [e for e in map(_entry, reply[1] or ()) if e is not None]
            if len(taken) >= most or _text(cursor) == "0-0":
                break
        return taken

    def take_entry(
        self, group: str, consumer: str, entry: str, idle: float
    ) -> Deferred[Taken]:
        ran = run_script(
            self._redis,
            TAKE_ENTRY,
            [self.keys.work(group)],
            [group, consumer, entry, int(idle * 1000), HANDED_BACK_IDLE],
        )

        def taken(reply: list[Any]) -> Taken:
            what = _text(reply[0])
            if what == "taken":
                return Taken(_entry(reply[1:]))
            if what == "held":
                return Taken(holder=_text(reply[1]))
            return Taken()

        return ran.addCallbacks(taken, _refused)

    def touch(
        self, group: str, consumer: str, entries: Sequence[str]
    ) -> Deferred[set[str]]:
        if not entries:
            return succeed(set())
        claimed = self._command(
            "XCLAIM", self.keys.work(group), group, consumer, 0, *entries, "JUSTID"
        )
        return claimed.addCallback(lambda ids: {_text(i) for i in ids or []})

    def finish(
        self,
        group: str,
        entries: Sequence[str],
        posts: Sequence[tuple[str, bytes]] = (),
    ) -> Deferred[None]:
        # On the queue's own connection if no read waits there: a consumer
        # sends its answers just before its next read, and both go in one
        # write (one wake-up of Redis, and one of the consumer if lines
        # were waiting).
        work = self._work
        redis = (
            work
            if work is not None and work.connected and not self._work_waits
            else self._redis
        )
        if not entries and not posts:
            return succeed(None)
        return self._post(redis, posts, group, entries)

    def hand_back(
        self, group: str, consumer: str, entries: Sequence[str]
    ) -> Deferred[None]:
        if not entries:
            return succeed(None)
        return self._done(
            self._command(
                "XCLAIM",
                self.keys.work(group),
                group,
                consumer,
                0,
                *entries,
                "IDLE",
                HANDED_BACK_IDLE,
                "JUSTID",
            )
        )

    def still_there(self, group: str, entries: Sequence[str]) -> Deferred[set[str]]:
        stream = self.keys.work(group)
        looks = [self._command("XRANGE", stream, e, e) for e in entries]
        return self._all(looks).addCallback(
            lambda found: {e for e, f in zip(entries, found, strict=True) if f}
        )

    # -- IDirectory ----------------------------------------------------------------

    def set_client(self, instance: str, client: ClientRecord) -> Deferred[None]:
        record = _json(
            {
                "id": client.conv,
                "peer": client.peer,
                "responder": client.responder,
                "partner": client.partner,
                "holder": client.holder,
            }
        )
        return self._done(
            self._command("HSET", self.keys.clients(instance), client.conv, record)
        )

    def remove_client(self, instance: str, conv: int) -> Deferred[None]:
        return self._done(self._command("HDEL", self.keys.clients(instance), conv))

    def has_client(self, instance: str, conv: int) -> Deferred[bool]:
        there = self._command("HEXISTS", self.keys.clients(instance), conv)
        return there.addCallback(bool)

    def clients(
        self, instances: Sequence[str]
    ) -> Deferred[dict[str, list[ClientRecord]]]:
        names = list(instances)
        hashes = [self._command("HGETALL", self.keys.clients(n)) for n in names]

        def records(replies: list[Any]) -> dict[str, list[ClientRecord]]:
            found: dict[str, list[ClientRecord]] = {}
            for name, flat in zip(names, replies, strict=True):
                flat = flat or []
                pairs = zip(flat[::2], flat[1::2], strict=False)
                made = [_client(conv, value) for conv, value in pairs]
                found[name] = sorted(
                    (r for r in made if r is not None), key=lambda r: r.conv
                )
            return found

        return self._all(hashes).addCallback(records)

    def queue_view(self, group: str, idle: float) -> Deferred[list[QueuedEntry]]:
        return Deferred.fromCoroutine(self._queue_view(group, idle))

    async def _queue_view(self, group: str, idle: float) -> list[QueuedEntry]:
        stream = self.keys.work(group)
        entries = self._command("XRANGE", stream, "-", "+", "COUNT", VIEW_MOST)
        pending = self._redis.command("XPENDING", stream, group, "-", "+", VIEW_MOST)
        found = await entries
        try:
            held = await pending
        except RedisError as e:
            if "NOGROUP" not in str(e):
                raise BrokerRefused(str(e)) from None
            held = []
        holders = {_text(p[0]): _text(p[1]) for p in held or [] if p[2] < idle * 1000}
        view = []
        for raw in found or []:
            entry = _entry(raw)
            if entry is not None:
                view.append(
                    QueuedEntry(entry.entry, entry.data, holders.get(entry.entry))
                )
        return view

    # -- IHistory ------------------------------------------------------------------

    def add_history(
        self, instance: str, conv: int, items: Sequence[bytes]
    ) -> Deferred[int]:
        if any(b"\n" in item for item in items):
            raise ValueError("a history item has no newline")
        ran = run_script(
            self._redis,
            HISTORY_ADD,
            [self.keys.history(instance)],
            [
                conv,
                HISTORY_ITEMS,
                HISTORY_BYTES,
                int(self.timings.heartbeat_ttl * 1000),
                *items,
            ],
        )
        return ran.addCallbacks(int, _refused)

    def history(self, instance: str, conv: int) -> Deferred[list[Kept]]:
        got = self._command("HGET", self.keys.history(instance), conv)
        return got.addCallback(_kept)

    def drop_history(self, instance: str, conv: int) -> Deferred[None]:
        return self._done(self._command("HDEL", self.keys.history(instance), conv))

    # -- IPairing ------------------------------------------------------------------

    def pair_or_wait(self, entry: bytes, front: bool) -> Deferred[bytes | None]:
        ran = run_script(
            self._redis,
            POP_OR_WAIT,
            [self.keys.pair_waiting],
            [entry, self.keys.instance_prefix, "front" if front else "back"],
        )
        return ran.addErrback(_refused)

    def start_waiting(self, entry: bytes, front: bool) -> Deferred[None]:
        key = self.keys.pair_waiting
        # In one write, in this order (the client pipelines what one turn
        # of the reactor sends).
        quietly(self._command("LREM", key, 0, entry))
        return self._done(self._command("LPUSH" if front else "RPUSH", key, entry))

    def stop_waiting(self, entry: bytes) -> Deferred[None]:
        return self._done(self._command("LREM", self.keys.pair_waiting, 0, entry))

    def waiting(self) -> Deferred[list[bytes]]:
        return self._command("LRANGE", self.keys.pair_waiting, 0, -1).addCallback(
            lambda found: list(found or [])
        )


def _kept(value: bytes | None) -> list[Kept]:
    """A history field (``HISTORY_ADD``'s layout) as its items."""
    if not value:
        return []
    kept = []
    for line in value.split(b"\n")[1:]:
        number, _, data = line.partition(b" ")
        if number.isdigit():
            kept.append(Kept(int(number), data))
    return kept


def _no_group_again(failure: Failure) -> list[WorkEntry] | Failure:
    """A queue made again and gone again at once: nothing read this time."""
    if failure.check(RedisError) and "NOGROUP" in str(failure.value):
        return []
    return _refused(failure)


def _nothing(_: object) -> None:
    return None


def _seconds(wait: float) -> str:
    """A blocking command's timeout, in seconds (Redis 7 takes decimals)."""
    return f"{wait:.3f}"


# -- Starting -----------------------------------------------------------------------


async def connect(
    reactor: Any,
    url: str,
    *,
    inbox: bool = False,
    work: bool = False,
    keys: Keys | None = None,
    timings: Timings | None = None,
) -> RedisBroker:
    """Connect to the broker at *url* (a connection for commands, and one
    for each kind of read that waits), and check its protocol.

    Every way this fails is one line: ``ValueError`` for a bad URL,
    ``BrokerUnavailable`` for a broker that cannot be reached,
    ``BrokerRefused`` for one that speaks another protocol.
    """
    address = parse_broker_url(url)
    # The broker's users say once that it is lost, and once that it is back.
    commands = RedisClient(reactor, address, logged=False)
    readers = {
        what: RedisClient(reactor, address, logged=False)
        for what, wanted in (("inbox", inbox), ("work", work))
        if wanted
    }
    broker = RedisBroker(
        reactor,
        commands,
        inbox=readers.get("inbox"),
        work=readers.get("work"),
        keys=keys,
        timings=timings,
    )
    try:
        for client in [commands, *readers.values()]:
            await client.start()
        await broker.check_protocol()
    except (BrokerUnavailable, BrokerRefused):
        await broker.close()
        raise
    return broker


def register_blocking(
    address: BrokerAddress,
    about: Mapping[str, Any],
    *,
    keys: Keys | None = None,
    timings: Timings | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> str:
    """Reach the broker, check its protocol, and take a name for this
    instance (``i1``, ``i2``...), before the reactor runs.  ``SystemExit``
    with one line if any of it fails."""
    keys = keys or Keys()
    timings = timings or Timings()
    where = f"sockchat: cannot use the broker at {address.display}"
    try:
        redis = blocking.connect(address, timeout)
    except BlockingError as e:
        raise SystemExit(f"{where}: {e}") from None
    try:
        redis.call("SET", keys.protocol, PROTOCOL, "NX")
        theirs = redis.call("GET", keys.protocol)
        if theirs != str(PROTOCOL).encode():
            shown = theirs.decode(errors="replace") if theirs else "none"
            raise SystemExit(
                f"{where}: it holds broker protocol {shown}, and this sockchat "
                f"speaks {PROTOCOL}; run the same sockchat version everywhere"
            )
        number = redis.call("INCR", keys.instance_counter)
        name = f"i{number}"
        redis.call(
            "SET",
            keys.instance(name),
            _json({"v": PROTOCOL, "name": name, **about}),
            "PX",
            int(timings.heartbeat_ttl * 1000),
        )
        redis.call("SADD", keys.instances, name)
    except BlockingRefused as e:
        raise SystemExit(f"{where}: it said {e}") from None
    except (OSError, ConnectionError) as e:
        raise SystemExit(f"{where}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        redis.close()
    return name
