"""An in-memory Redis with the ``IRedis`` interface, for fast broker tests.

``FakeRedisServer(clock)`` holds the data; ``server.client()`` is a fake
``IRedis`` connected to it, with ``connected``, an ``on_state`` hook like
``RedisClient``'s (called once per change after the start, never at the
start), ``command(*args)``, ``start()`` and ``stop()``.

Replies are Redis 7's, as ``RedisClient`` delivers them (``int``,
``bytes``, ``None``, nested ``list``, ``str`` for a status), and errors are
``RedisError`` with Redis's text where that was cheap to match;
tests/broker/test_redis_real.py runs the same command sequences against a real
``redis-server`` and compares.  The commands:

    PING GET SET(NX XX EX PX KEEPTTL) DEL EXISTS INCR PEXPIRE PTTL
    SADD SREM SMEMBERS HSET HDEL HGET HGETALL
    RPUSH LPUSH LPOP LREM LRANGE LLEN BLPOP
    XADD XDEL XLEN XRANGE XGROUP(CREATE) XREADGROUP XACK XPENDING XCLAIM
    XAUTOCLAIM EVAL EVALSHA

A command's reply is delivered at once (the Deferred has fired when
``command`` returns), except for a blocking command (``BLPOP``,
``XREADGROUP ... BLOCK``), which waits for data or for its timeout on the
clock, as Redis's would; while it waits, that client's later commands wait
behind it, as on a real connection.  Keys expire by the clock.  The
server's time is ``epoch + clock.seconds()``, so that a ``Clock`` that
starts at 0 still gives stream ids and idle times like a real server's.

``EVAL``/``EVALSHA`` run the Python twin of each script in
``sockchat._broker.scripts`` (``TWINS`` below); ``EVALSHA`` of a script the server
has not seen since it (re)started is ``NOSCRIPT``, as on a real server.

Faults:

- ``server.stop()``: every client loses its connection; commands in flight
  or blocked fail with ``BrokerUnavailable``, ``on_state(False)`` is
  called, and new commands fail at once until ``server.start()``.
- ``server.start(flush=False)``: the clients come back
  (``on_state(True)``); ``flush=True`` is a restart without persistence
  (no data).  Either way the script cache is empty again.
- ``client.kill()``: this client's connection is lost (as with
  ``CLIENT KILL``); it comes back after ``reconnect_delay`` seconds on the
  clock, if the server is up, else when it starts.
- ``client.close()`` (or ``stop()``): the client is closed for good.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from sockchat._broker.redis import BrokerUnavailable, RedisError
from sockchat._broker.resp import encode_arg
from sockchat._broker.scripts import POP_OR_WAIT, SCRIPTS, Script

__all__ = ["TWINS", "FakeRedisClient", "FakeRedisServer"]

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"
SYNTAX = "ERR syntax error"
BAD_ID = "ERR Invalid stream ID specified as stream command argument"

StreamId = tuple[int, int]
MAX_SEQ = 2**64 - 1


class _WouldBlock(Exception):
    """A blocking command found nothing: wait on *keys* up to *timeout* s
    (0: for ever)."""

    def __init__(self, keys: list[bytes], timeout: float) -> None:
        self.keys = keys
        self.timeout = timeout


@define
class _Pending:
    consumer: bytes
    delivery_time: int
    delivery_count: int


@define
class _Group:
    last_delivered: StreamId
    pel: dict[StreamId, _Pending] = field(factory=dict)
    consumers: dict[bytes, int] = field(factory=dict)

    def sorted_pel(self) -> list[StreamId]:
        return sorted(self.pel)


@define
class _Stream:
    entries: dict[StreamId, list[bytes]] = field(factory=dict)
    last_id: StreamId = (0, 0)
    groups: dict[bytes, _Group] = field(factory=dict)


def _id_bytes(sid: StreamId) -> bytes:
    return b"%d-%d" % sid


def _parse_id(text: bytes, *, seq_default: int = 0) -> StreamId:
    ms, dash, seq = text.partition(b"-")
    try:
        ms_n = int(ms)
        seq_n = int(seq) if dash else seq_default
    except ValueError:
        raise RedisError(BAD_ID) from None
    if not (ms.isdigit() and (not dash or seq.isdigit())):
        raise RedisError(BAD_ID)
    if ms_n > MAX_SEQ or seq_n > MAX_SEQ:
        raise RedisError(BAD_ID)
    return ms_n, seq_n


def _range_bound(text: bytes, *, start: bool) -> tuple[StreamId, bool]:
    """A bound of XRANGE/XPENDING/XAUTOCLAIM: (id, exclusive)."""
    if text == b"-":
        return (0, 0), False
    if text == b"+":
        return (MAX_SEQ, MAX_SEQ), False
    exclusive = text.startswith(b"(")
    if exclusive:
        text = text[1:]
    return _parse_id(text, seq_default=0 if start else MAX_SEQ), exclusive


def _in_range(
    sid: StreamId, low: tuple[StreamId, bool], high: tuple[StreamId, bool]
) -> bool:
    (lo, lo_ex), (hi, hi_ex) = low, high
    if sid < lo or (lo_ex and sid == lo):
        return False
    return not (sid > hi or (hi_ex and sid == hi))


def _int(text: bytes, error: str = NOT_INTEGER) -> int:
    try:
        if text.strip() != text or not text:
            raise ValueError
        value = int(text)
    except ValueError:
        raise RedisError(error) from None
    if not -(2**63) <= value < 2**63:
        raise RedisError(error)
    return value


def _float(text: bytes, error: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RedisError(error) from None


def _arity(name: str) -> RedisError:
    return RedisError(f"ERR wrong number of arguments for '{name}' command")


class FakeRedisServer:
    """The data and the command table; see the module's docstring."""

    def __init__(self, clock: IReactorTime, *, epoch: float = 1_700_000_000.0) -> None:
        self.clock = clock
        self.epoch = epoch
        self.running = True
        self.url = "redis://fake-redis:6379/0"
        self._data: dict[bytes, Any] = {}
        self._expires: dict[bytes, int] = {}
        self._loaded: set[str] = set()
        self._twins: dict[str, Callable[[_ScriptCall], Any]] = {}
        self._lua: dict[str, Script] = {}
        self.clients: list[FakeRedisClient] = []
        self._blocked: list[_Blocked] = []
        self._touched: list[bytes] = []
        #: Every command run, in order (the arguments as bytes).
        self.log: list[tuple[bytes, ...]] = []
        for name, script in SCRIPTS.items():
            self.register_script(script, TWINS[name])

    # -- the outside -----------------------------------------------------

    def client(
        self, *, on_state: Callable[[bool], object] | None = None
    ) -> FakeRedisClient:
        """A connected fake client (connected when the server is up)."""
        c = FakeRedisClient(self, on_state=on_state)
        self.clients.append(c)
        return c

    def register_script(
        self, script: Script, twin: Callable[[_ScriptCall], Any]
    ) -> None:
        """Run *twin* for *script* in EVAL/EVALSHA."""
        self._twins[script.sha1] = twin
        self._lua[script.lua] = script

    def now_ms(self) -> int:
        return int((self.epoch + self.clock.seconds()) * 1000)

    def stop(self) -> None:
        """The server goes away: every client loses its connection."""
        self.running = False
        for c in list(self.clients):
            c._lose("the fake redis server stopped")

    def start(self, *, flush: bool = False) -> None:
        """The server is back (with no data if *flush*), and so are its
        clients; the script cache is empty, as after any restart."""
        self.running = True
        self._loaded.clear()
        if flush:
            self._data.clear()
            self._expires.clear()
        for c in list(self.clients):
            if c._wants_connection and not c.connected:
                c._come_back()

    def keys(self) -> list[bytes]:
        """The keys that exist now (for tests' assertions)."""
        return [k for k in list(self._data) if self._lookup(k) is not None]

    # -- running commands ------------------------------------------------

    def run(self, args: list[bytes], *, may_block: bool = False) -> Any:
        """One command's reply; raises RedisError (or _WouldBlock)."""
        if not args:
            raise RedisError("ERR empty command")
        name = args[0].decode("utf-8", "replace").lower()
        handler = _COMMANDS.get(name)
        if handler is None:
            rest = "".join(f"'{a.decode('utf-8', 'replace')}' " for a in args[1:])
            raise RedisError(
                f"ERR unknown command '{args[0].decode('utf-8', 'replace')}', "
                f"with args beginning with: {rest}"
            )
        method, arity = handler
        if (arity > 0 and len(args) != arity) or (arity < 0 and len(args) < -arity):
            raise _arity(name)
        self.log.append(tuple(args))
        return method(self, args[1:], may_block)

    def _after_command(self) -> None:
        """Serve the clients blocked on keys a command wrote."""
        while self._touched:
            touched = set(self._touched)
            self._touched.clear()
            for blocked in list(self._blocked):
                if blocked in self._blocked and touched & set(blocked.keys):
                    blocked.retry()

    # -- the keyspace ------------------------------------------------------

    def _lookup(self, key: bytes) -> Any:
        expires = self._expires.get(key)
        if expires is not None and expires <= self.now_ms():
            del self._expires[key]
            del self._data[key]
        return self._data.get(key)

    def _typed(self, key: bytes, kind: type) -> Any:
        value = self._lookup(key)
        if value is not None and not isinstance(value, kind):
            raise RedisError(WRONGTYPE)
        return value

    def _delete(self, key: bytes) -> bool:
        if self._lookup(key) is None:
            return False
        del self._data[key]
        self._expires.pop(key, None)
        return True

    def _drop_if_empty(self, key: bytes) -> None:
        value = self._data.get(key)
        if isinstance(value, (list, set, dict)) and not value:
            self._delete(key)

    def _string(self, key: bytes) -> bytes | None:
        return self._typed(key, bytes)  # type: ignore[no-any-return]

    def _list(self, key: bytes, *, create: bool = False) -> list[bytes] | None:
        value = self._typed(key, list)
        if value is None and create:
            value = self._data[key] = []
        return value  # type: ignore[no-any-return]

    def _stream(self, key: bytes, *, create: bool = False) -> _Stream | None:
        value = self._typed(key, _Stream)
        if value is None and create:
            value = self._data[key] = _Stream()
        return value  # type: ignore[no-any-return]

    # -- strings and keys ----------------------------------------------------

    def _ping(self, args: list[bytes], _: bool) -> Any:
        if len(args) > 1:
            raise _arity("ping")
        return args[0] if args else "PONG"

    def _get(self, args: list[bytes], _: bool) -> Any:
        return self._string(args[0])

    def _set(self, args: list[bytes], _: bool) -> Any:
        key, value, options = args[0], args[1], [a.upper() for a in args[2:]]
        nx = xx = keepttl = False
        ttl_ms: int | None = None
        i = 0
        while i < len(options):
            option = options[i]
            if option == b"NX" and not xx:
                nx = True
            elif option == b"XX" and not nx:
                xx = True
            elif option == b"KEEPTTL" and ttl_ms is None:
                keepttl = True
            elif option in (b"EX", b"PX") and ttl_ms is None and not keepttl:
                if i + 1 >= len(options):
                    raise RedisError(SYNTAX)
                amount = _int(args[2 + i + 1])
                if amount <= 0:
                    raise RedisError("ERR invalid expire time in 'set' command")
                ttl_ms = amount * 1000 if option == b"EX" else amount
                i += 1
            else:
                raise RedisError(SYNTAX)
            i += 1
        exists = self._lookup(key) is not None
        if (nx and exists) or (xx and not exists):
            return None
        self._data[key] = value
        if ttl_ms is not None:
            self._expires[key] = self.now_ms() + ttl_ms
        elif not keepttl:
            self._expires.pop(key, None)
        return "OK"

    def _del(self, args: list[bytes], _: bool) -> Any:
        return sum(self._delete(k) for k in args)

    def _exists(self, args: list[bytes], _: bool) -> Any:
        return sum(self._lookup(k) is not None for k in args)

    def _incr(self, args: list[bytes], _: bool) -> Any:
        value = self._string(args[0])
        number = 0 if value is None else _int(value)
        if number == 2**63 - 1:
            raise RedisError("ERR increment or decrement would overflow")
        self._data[args[0]] = b"%d" % (number + 1)
        return number + 1

    def _pexpire(self, args: list[bytes], _: bool) -> Any:
        if len(args) > 2:
            raise RedisError("ERR Unsupported option " + args[2].decode())
        ms = _int(args[1])
        if self._lookup(args[0]) is None:
            return 0
        if ms <= 0:
            self._delete(args[0])
        else:
            self._expires[args[0]] = self.now_ms() + ms
        return 1

    def _pttl(self, args: list[bytes], _: bool) -> Any:
        if self._lookup(args[0]) is None:
            return -2
        expires = self._expires.get(args[0])
        return -1 if expires is None else expires - self.now_ms()

    # -- sets and hashes -------------------------------------------------------

    def _sadd(self, args: list[bytes], _: bool) -> Any:
        members = self._typed(args[0], set)
        if members is None:
            members = self._data[args[0]] = set()
        before = len(members)
        members.update(args[1:])
        return len(members) - before

    def _srem(self, args: list[bytes], _: bool) -> Any:
        members = self._typed(args[0], set)
        if members is None:
            return 0
        removed = sum(1 for m in set(args[1:]) if m in members)
        members.difference_update(args[1:])
        self._drop_if_empty(args[0])
        return removed

    def _smembers(self, args: list[bytes], _: bool) -> Any:
        return list(self._typed(args[0], set) or ())

    def _hset(self, args: list[bytes], _: bool) -> Any:
        if len(args) % 2 == 0:
            raise _arity("hset")
        fields = self._typed(args[0], dict)
        if fields is None:
            fields = self._data[args[0]] = {}
        added = 0
        for name, value in zip(args[1::2], args[2::2], strict=True):
            added += name not in fields
            fields[name] = value
        return added

    def _hdel(self, args: list[bytes], _: bool) -> Any:
        fields = self._typed(args[0], dict)
        if fields is None:
            return 0
        removed = 0
        for name in args[1:]:
            if fields.pop(name, None) is not None:
                removed += 1
        self._drop_if_empty(args[0])
        return removed

    def _hget(self, args: list[bytes], _: bool) -> Any:
        return (self._typed(args[0], dict) or {}).get(args[1])

    def _hgetall(self, args: list[bytes], _: bool) -> Any:
        fields = self._typed(args[0], dict) or {}
        return [x for pair in fields.items() for x in pair]

    # -- lists -------------------------------------------------------------------

    def _push(self, args: list[bytes], front: bool) -> int:
        items = self._list(args[0], create=True)
        assert items is not None
        for value in args[1:]:
            if front:
                items.insert(0, value)
            else:
                items.append(value)
        self._touched.append(args[0])
        return len(items)

    def _rpush(self, args: list[bytes], _: bool) -> Any:
        return self._push(args, front=False)

    def _lpush(self, args: list[bytes], _: bool) -> Any:
        return self._push(args, front=True)

    def _lpop(self, args: list[bytes], _: bool) -> Any:
        if len(args) > 2:
            raise _arity("lpop")
        count = None
        if len(args) == 2:
            count = _int(args[1], "ERR value is out of range, must be positive")
            if count < 0:
                raise RedisError("ERR value is out of range, must be positive")
        items = self._list(args[0])
        if items is None:
            return None
        if count is None:
            value = items.pop(0)
            self._drop_if_empty(args[0])
            return value
        taken, items[:count] = items[:count], []
        self._drop_if_empty(args[0])
        return taken

    def _lrem(self, args: list[bytes], _: bool) -> Any:
        count = _int(args[1])
        items = self._list(args[0])
        if items is None:
            return 0
        order = range(len(items) - 1, -1, -1) if count < 0 else range(len(items))
        limit = abs(count) or len(items)
        doomed = [i for i in order if items[i] == args[2]][:limit]
        for i in sorted(doomed, reverse=True):
            del items[i]
        self._drop_if_empty(args[0])
        return len(doomed)

    def _lrange(self, args: list[bytes], _: bool) -> Any:
        start, stop = _int(args[1]), _int(args[2])
        items = self._list(args[0]) or []
        n = len(items)
        start = max(start + n if start < 0 else start, 0)
        stop = stop + n if stop < 0 else stop
        if start > stop or start >= n:
            return []
        return items[start : min(stop, n - 1) + 1]

    def _llen(self, args: list[bytes], _: bool) -> Any:
        return len(self._list(args[0]) or [])

    def _blpop(self, args: list[bytes], may_block: bool) -> Any:
        timeout = _float(args[-1], "ERR timeout is not a float or out of range")
        if timeout < 0:
            raise RedisError("ERR timeout is negative")
        keys = args[:-1]
        for key in keys:
            items = self._list(key)
            if items:
                value = items.pop(0)
                self._drop_if_empty(key)
                return [key, value]
        if may_block:
            raise _WouldBlock(keys, timeout)
        return None

    # -- streams -------------------------------------------------------------------

    def _xadd(self, args: list[bytes], _: bool) -> Any:
        key, rest = args[0], args[1:]
        nomkstream = bool(rest) and rest[0].upper() == b"NOMKSTREAM"
        if nomkstream:
            rest = rest[1:]
        if not rest or len(rest) % 2 == 0 or len(rest) < 3:
            raise _arity("xadd")
        id_text, fields = rest[0], rest[1:]
        stream = self._stream(key)
        if stream is None and nomkstream:
            return None
        last = stream.last_id if stream is not None else (0, 0)
        if id_text == b"*":
            now = self.now_ms()
            new = (now, 0) if now > last[0] else (last[0], last[1] + 1)
        else:
            new = _parse_id(id_text)
            if new == (0, 0):
                raise RedisError(
                    "ERR The ID specified in XADD must be greater than 0-0"
                )
            if new <= last:
                raise RedisError(
                    "ERR The ID specified in XADD is equal or smaller than the "
                    "target stream top item"
                )
        if stream is None:
            stream = self._stream(key, create=True)
            assert stream is not None
        stream.entries[new] = list(fields)
        stream.last_id = new
        self._touched.append(key)
        return _id_bytes(new)

    def _xdel(self, args: list[bytes], _: bool) -> Any:
        ids = [_parse_id(a) for a in args[1:]]
        stream = self._stream(args[0])
        if stream is None:
            return 0
        return sum(stream.entries.pop(i, None) is not None for i in dict.fromkeys(ids))

    def _xlen(self, args: list[bytes], _: bool) -> Any:
        stream = self._stream(args[0])
        return 0 if stream is None else len(stream.entries)

    def _entry(self, stream: _Stream, sid: StreamId) -> list[Any]:
        return [_id_bytes(sid), list(stream.entries[sid])]

    def _xrange(self, args: list[bytes], _: bool) -> Any:
        low = _range_bound(args[1], start=True)
        high = _range_bound(args[2], start=False)
        count = None
        if len(args) > 3:
            if len(args) != 5 or args[3].upper() != b"COUNT":
                raise RedisError(SYNTAX)
            count = _int(args[4])
        stream = self._stream(args[0])
        if count is not None and count <= 0:
            return None
        if stream is None:
            return []
        found = [s for s in stream.entries if _in_range(s, low, high)]
        if count is not None:
            found = found[:count]
        return [self._entry(stream, s) for s in found]

    def _group(self, key: bytes, group: bytes, command: str) -> tuple[_Stream, _Group]:
        stream = self._stream(key)
        found = stream.groups.get(group) if stream is not None else None
        if stream is None or found is None:
            where = (
                " in XREADGROUP with GROUP option" if command == "xreadgroup" else ""
            )
            raise RedisError(
                f"NOGROUP No such key '{key.decode('utf-8', 'replace')}' or consumer "
                f"group '{group.decode('utf-8', 'replace')}'{where}"
            )
        return stream, found

    def _xgroup(self, args: list[bytes], _: bool) -> Any:
        sub = args[0].upper()
        if sub != b"CREATE":
            raise RedisError(
                f"ERR unknown subcommand '{args[0].decode('utf-8', 'replace')}'. "
                "Try XGROUP HELP."
            )
        if len(args) < 4:
            raise _arity("xgroup|create")
        key, group, id_text = args[1], args[2], args[3]
        mkstream = False
        options = [a.upper() for a in args[4:]]
        i = 0
        while i < len(options):
            if options[i] == b"MKSTREAM":
                mkstream = True
            elif options[i] == b"ENTRIESREAD" and i + 1 < len(options):
                _int(args[4 + i + 1])
                i += 1
            else:
                raise RedisError(SYNTAX)
            i += 1
        stream = self._stream(key)
        if id_text == b"$":
            start = stream.last_id if stream is not None else (0, 0)
        else:
            start = _parse_id(id_text)
        if stream is None:
            if not mkstream:
                raise RedisError(
                    "ERR The XGROUP subcommand requires the key to exist. Note that "
                    "for CREATE you may want to use the MKSTREAM option to create "
                    "an empty stream automatically."
                )
            stream = self._stream(key, create=True)
            assert stream is not None
        if group in stream.groups:
            raise RedisError("BUSYGROUP Consumer Group name already exists")
        stream.groups[group] = _Group(last_delivered=start)
        return "OK"

    def _xreadgroup(self, args: list[bytes], may_block: bool) -> Any:
        if args[0].upper() != b"GROUP" or len(args) < 6:
            raise (
                RedisError(SYNTAX)
                if args[0].upper() != b"GROUP"
                else _arity("xreadgroup")
            )
        group_name, consumer = args[1], args[2]
        count: int | None = None
        block: int | None = None
        noack = False
        i = 3
        while i < len(args):
            option = args[i].upper()
            if option == b"COUNT" and i + 1 < len(args):
                count = _int(args[i + 1])
                i += 2
            elif option == b"BLOCK" and i + 1 < len(args):
                block = _int(
                    args[i + 1], "ERR timeout is not an integer or out of range"
                )
                if block < 0:
                    raise RedisError("ERR timeout is negative")
                i += 2
            elif option == b"NOACK":
                noack = True
                i += 1
            elif option == b"STREAMS":
                i += 1
                break
            else:
                raise RedisError(SYNTAX)
        else:
            raise RedisError(SYNTAX)
        rest = args[i:]
        if not rest or len(rest) % 2:
            raise RedisError(
                "ERR Unbalanced XREAD list of streams: for each stream key an ID "
                "or '$' must be specified."
            )
        half = len(rest) // 2
        keys, ids = rest[:half], rest[half:]
        if count is not None and count <= 0:
            count = None
        now = self.now_ms()
        targets = []
        for key, id_text in zip(keys, ids, strict=True):
            stream, group = self._group(key, group_name, "xreadgroup")
            start = None if id_text == b">" else _parse_id(id_text)
            targets.append((key, stream, group, start))
        reply = []
        for key, stream, group, start in targets:
            group.consumers.setdefault(consumer, now)
            group.consumers[consumer] = now
            if start is None:
                new = [s for s in stream.entries if s > group.last_delivered]
                if count is not None:
                    new = new[:count]
                if not new:
                    continue
                group.last_delivered = new[-1]
                for sid in new:
                    if not noack:
                        group.pel[sid] = _Pending(consumer, now, 1)
                reply.append([key, [self._entry(stream, s) for s in new]])
            else:
                mine = [
                    s
                    for s in group.sorted_pel()
                    if s > start and group.pel[s].consumer == consumer
                ]
                if count is not None:
                    mine = mine[:count]
                entries: list[Any] = []
                for sid in mine:
                    if sid in stream.entries:
                        pending = group.pel[sid]
                        pending.delivery_time = now
                        pending.delivery_count += 1
                        entries.append(self._entry(stream, sid))
                    else:
                        entries.append([_id_bytes(sid), None])
                reply.append([key, entries])
        if reply:
            return reply
        if block is not None and may_block:
            raise _WouldBlock(list(keys), block / 1000)
        return None

    def _xack(self, args: list[bytes], _: bool) -> Any:
        ids = [_parse_id(a) for a in args[2:]]
        stream = self._stream(args[0])
        group = stream.groups.get(args[1]) if stream is not None else None
        if group is None:
            return 0
        return sum(group.pel.pop(i, None) is not None for i in dict.fromkeys(ids))

    def _xpending(self, args: list[bytes], _: bool) -> Any:
        key, group_name = args[0], args[1]
        rest = args[2:]
        min_idle = None
        if rest and rest[0].upper() == b"IDLE":
            if len(rest) < 2:
                raise RedisError(SYNTAX)
            min_idle = _int(rest[1])
            rest = rest[2:]
            if not rest:
                raise RedisError(SYNTAX)
        if rest and len(rest) not in (3, 4):
            raise RedisError(SYNTAX)
        low = high = None
        count = 0
        if rest:
            low = _range_bound(rest[0], start=True)
            high = _range_bound(rest[1], start=False)
            count = _int(rest[2])
        _, group = self._group(key, group_name, "xpending")
        now = self.now_ms()
        if not rest:
            ids = group.sorted_pel()
            if not ids:
                return [0, None, None, None]
            per: collections.Counter[bytes] = collections.Counter(
                p.consumer for p in group.pel.values()
            )
            return [
                len(ids),
                _id_bytes(ids[0]),
                _id_bytes(ids[-1]),
                [[c, b"%d" % per[c]] for c in sorted(per)],
            ]
        assert low is not None
        assert high is not None
        only = rest[3] if len(rest) == 4 else None
        found = []
        for sid in group.sorted_pel():
            pending = group.pel[sid]
            if not _in_range(sid, low, high):
                continue
            if only is not None and pending.consumer != only:
                continue
            idle = now - pending.delivery_time
            if min_idle is not None and idle < min_idle:
                continue
            if len(found) >= count:
                break
            found.append(
                [_id_bytes(sid), pending.consumer, idle, pending.delivery_count]
            )
        return found

    def _claim_to(self, group: _Group, consumer: bytes, now: int) -> None:
        group.consumers.setdefault(consumer, now)

    def _xclaim(self, args: list[bytes], _: bool) -> Any:
        key, group_name, consumer = args[0], args[1], args[2]
        min_idle = max(
            _int(args[3], "ERR Invalid min-idle-time argument for XCLAIM"), 0
        )
        ids: list[StreamId] = []
        j = 4
        while j < len(args):
            try:
                ids.append(_parse_id(args[j]))
            except RedisError:
                break
            j += 1
        now = self.now_ms()
        delivery: int | None = None
        retrycount: int | None = None
        force = justid = False
        while j < len(args):
            option = args[j].upper()
            more = j + 1 < len(args)
            if option == b"FORCE":
                force = True
            elif option == b"JUSTID":
                justid = True
            elif option == b"IDLE" and more:
                j += 1
                delivery = now - _int(
                    args[j], "ERR Invalid IDLE option argument for XCLAIM"
                )
            elif option == b"TIME" and more:
                j += 1
                delivery = _int(args[j], "ERR Invalid TIME option argument for XCLAIM")
            elif option == b"RETRYCOUNT" and more:
                j += 1
                retrycount = _int(
                    args[j], "ERR Invalid RETRYCOUNT option argument for XCLAIM"
                )
            elif option == b"LASTID" and more:
                j += 1
                _parse_id(args[j])
            else:
                what = args[j].decode("utf-8", "replace")
                raise RedisError(f"ERR Unrecognized XCLAIM option '{what}'")
            j += 1
        if delivery is None or delivery < 0 or delivery > now:
            delivery = now
        stream, group = self._group(key, group_name, "xclaim")
        reply: list[Any] = []
        for sid in ids:
            pending = group.pel.get(sid)
            if sid not in stream.entries:
                if pending is not None:
                    del group.pel[sid]
                continue
            created = False
            if force and pending is None:
                pending = group.pel[sid] = _Pending(consumer, delivery, 1)
                created = True
            if pending is None:
                continue
            if not created and min_idle and now - pending.delivery_time < min_idle:
                continue
            self._claim_to(group, consumer, now)
            pending.consumer = consumer
            pending.delivery_time = delivery
            if retrycount is not None:
                pending.delivery_count = retrycount
            elif not justid:
                pending.delivery_count += 1
            reply.append(_id_bytes(sid) if justid else self._entry(stream, sid))
        return reply

    def _xautoclaim(self, args: list[bytes], _: bool) -> Any:
        key, group_name, consumer = args[0], args[1], args[2]
        min_idle = max(
            _int(args[3], "ERR Invalid min-idle-time argument for XAUTOCLAIM"), 0
        )
        start, exclusive = _range_bound(args[4], start=True)
        count = 100
        justid = False
        j = 5
        while j < len(args):
            option = args[j].upper()
            if option == b"COUNT" and j + 1 < len(args):
                count = _int(args[j + 1])
                if count < 1:
                    raise RedisError("ERR COUNT must be > 0")
                j += 2
            elif option == b"JUSTID":
                justid = True
                j += 1
            else:
                raise RedisError(SYNTAX)
        stream, group = self._group(key, group_name, "xautoclaim")
        now = self.now_ms()
        ids = [
            s for s in group.sorted_pel() if s > start or (s == start and not exclusive)
        ]
        attempts = count * 10
        claimed: list[Any] = []
        deleted: list[bytes] = []
        position = 0
        while attempts and count and position < len(ids):
            attempts -= 1
            sid = ids[position]
            position += 1
            pending = group.pel[sid]
            if sid not in stream.entries:
                del group.pel[sid]
                deleted.append(_id_bytes(sid))
                continue
            if min_idle and now - pending.delivery_time < min_idle:
                continue
            self._claim_to(group, consumer, now)
            pending.consumer = consumer
            pending.delivery_time = now
            if not justid:
                pending.delivery_count += 1
            claimed.append(_id_bytes(sid) if justid else self._entry(stream, sid))
            count -= 1
        following = ids[position:]
        cursor = _id_bytes(following[0]) if following else b"0-0"
        return [cursor, claimed, deleted]

    # -- scripts -------------------------------------------------------------------

    def _eval_common(self, sha: str, args: list[bytes]) -> Any:
        numkeys = _int(args[1])
        if numkeys < 0:
            raise RedisError("ERR Number of keys can't be negative")
        if numkeys > len(args) - 2:
            raise RedisError("ERR Number of keys can't be greater than number of args")
        keys = args[2 : 2 + numkeys]
        argv = args[2 + numkeys :]
        return self._twins[sha](_ScriptCall(self, keys, argv))

    def _eval(self, args: list[bytes], _: bool) -> Any:
        script = self._lua.get(args[0].decode("utf-8", "replace"))
        if script is None:
            raise RedisError(
                "ERR the fake Redis has no Python twin for this script "
                "(register one with FakeRedisServer.register_script)"
            )
        self._loaded.add(script.sha1)
        return self._eval_common(script.sha1, args)

    def _evalsha(self, args: list[bytes], _: bool) -> Any:
        sha = args[0].decode("ascii", "replace").lower()
        if sha not in self._loaded:
            raise RedisError("NOSCRIPT No matching script. Please use EVAL.")
        return self._eval_common(sha, args)


#: name -> (method, arity as Redis counts it: > 0 exact, < 0 at least).
_COMMANDS: dict[
    str, tuple[Callable[[FakeRedisServer, list[bytes], bool], Any], int]
] = {
    "ping": (FakeRedisServer._ping, -1),
    "get": (FakeRedisServer._get, 2),
    "set": (FakeRedisServer._set, -3),
    "del": (FakeRedisServer._del, -2),
    "exists": (FakeRedisServer._exists, -2),
    "incr": (FakeRedisServer._incr, 2),
    "pexpire": (FakeRedisServer._pexpire, -3),
    "pttl": (FakeRedisServer._pttl, 2),
    "sadd": (FakeRedisServer._sadd, -3),
    "srem": (FakeRedisServer._srem, -3),
    "smembers": (FakeRedisServer._smembers, 2),
    "hset": (FakeRedisServer._hset, -4),
    "hdel": (FakeRedisServer._hdel, -3),
    "hget": (FakeRedisServer._hget, 3),
    "hgetall": (FakeRedisServer._hgetall, 2),
    "rpush": (FakeRedisServer._rpush, -3),
    "lpush": (FakeRedisServer._lpush, -3),
    "lpop": (FakeRedisServer._lpop, -2),
    "lrem": (FakeRedisServer._lrem, 4),
    "lrange": (FakeRedisServer._lrange, 4),
    "llen": (FakeRedisServer._llen, 2),
    "blpop": (FakeRedisServer._blpop, -3),
    "xadd": (FakeRedisServer._xadd, -5),
    "xdel": (FakeRedisServer._xdel, -3),
    "xlen": (FakeRedisServer._xlen, 2),
    "xrange": (FakeRedisServer._xrange, -4),
    "xgroup": (FakeRedisServer._xgroup, -2),
    "xreadgroup": (FakeRedisServer._xreadgroup, -7),
    "xack": (FakeRedisServer._xack, -4),
    "xpending": (FakeRedisServer._xpending, -3),
    "xclaim": (FakeRedisServer._xclaim, -6),
    "xautoclaim": (FakeRedisServer._xautoclaim, -6),
    "eval": (FakeRedisServer._eval, -3),
    "evalsha": (FakeRedisServer._evalsha, -3),
}


class _ScriptCall:
    """What a script's Python twin sees: KEYS, ARGV and ``redis.call``."""

    def __init__(
        self, server: FakeRedisServer, keys: list[bytes], argv: list[bytes]
    ) -> None:
        self.server = server
        self.keys = keys
        self.argv = argv

    def call(self, *args: str | bytes | int | float) -> Any:
        """``redis.call``: a command's reply; RedisError fails the script."""
        return self.server.run([encode_arg(a) for a in args])


def _pop_or_wait(s: _ScriptCall) -> Any:
    """The twin of ``POP_OR_WAIT``."""
    (waiting,), (me, prefix, where) = s.keys, s.argv[:3]
    if where not in (b"front", b"back"):
        raise RedisError("ERR pop_or_wait: ARGV[3] must be front or back")
    while True:
        entry = s.call("LPOP", waiting)
        if entry is None:
            break
        if entry == me:
            continue
        try:
            decoded = json.loads(entry)
        except ValueError:
            continue
        instance = decoded.get("instance") if isinstance(decoded, dict) else None
        if (
            isinstance(instance, str)
            and s.call("EXISTS", prefix + instance.encode()) == 1
        ):
            return entry
    s.call("LPUSH" if where == b"front" else "RPUSH", waiting, me)
    return None


#: Script name -> its Python twin.
TWINS: dict[str, Callable[[_ScriptCall], Any]] = {POP_OR_WAIT.name: _pop_or_wait}


class _Blocked:
    """A blocking command waiting for data on its keys."""

    def __init__(
        self,
        client: FakeRedisClient,
        args: list[bytes],
        keys: list[bytes],
        timeout: float,
        d: Deferred[Any],
    ) -> None:
        self.client = client
        self.args = args
        self.keys = keys
        self.d = d
        server = client.server
        self.timer: IDelayedCall | None = (
            server.clock.callLater(timeout, self._timed_out) if timeout > 0 else None
        )

    def _done(self) -> None:
        server = self.client.server
        if self in server._blocked:
            server._blocked.remove(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.client._blocked = None

    def retry(self) -> None:
        try:
            reply = self.client.server.run(self.args, may_block=True)
        except _WouldBlock:
            return
        except RedisError as e:
            self._done()
            self.d.errback(e)
        else:
            self._done()
            self.d.callback(reply)
        self.client._drain()

    def _timed_out(self) -> None:
        self.timer = None
        self._done()
        self.d.callback(None)
        self.client._drain()

    def fail(self, why: str) -> None:
        self._done()
        self.d.errback(BrokerUnavailable(why))


class FakeRedisClient:
    """A fake ``IRedis`` on a ``FakeRedisServer``."""

    #: Seconds after ``kill()`` before the client is connected again.
    reconnect_delay = 0.2

    def __init__(
        self, server: FakeRedisServer, *, on_state: Callable[[bool], object] | None
    ) -> None:
        self.server = server
        self.on_state = on_state
        self.connected = server.running
        self._wants_connection = True
        self._blocked: _Blocked | None = None
        self._queue: collections.deque[tuple[list[bytes], Deferred[Any]]] = (
            collections.deque()
        )
        self._reconnect: IDelayedCall | None = None
        self.display = server.url

    def start(self) -> Deferred[None]:
        """As ``RedisClient.start``: fails if the server is down."""
        if not self.connected:
            return fail(
                BrokerUnavailable(
                    f"cannot reach the broker at {self.display}: Connection refused"
                )
            )
        return succeed(None)

    def command(self, *args: str | bytes | int | float) -> Deferred[Any]:
        if not self.connected:
            return fail(
                BrokerUnavailable(f"the broker at {self.display} is unavailable")
            )
        encoded = [encode_arg(a) for a in args]
        d: Deferred[Any] = Deferred()
        self._queue.append((encoded, d))
        self._drain()
        return d

    def _drain(self) -> None:
        server = self.server
        while self._queue and self._blocked is None and self.connected:
            args, d = self._queue.popleft()
            try:
                reply = server.run(args, may_block=True)
            except _WouldBlock as e:
                self._blocked = _Blocked(self, args, e.keys, e.timeout, d)
                server._blocked.append(self._blocked)
            except RedisError as e:
                d.errback(e)
            else:
                d.callback(reply)
            server._after_command()

    def _lose(self, why: str) -> None:
        if not self.connected:
            return
        self.connected = False
        message = f"lost the broker at {self.display}: {why}"
        if self._blocked is not None:
            self._blocked.fail(message)
        while self._queue:
            self._queue.popleft()[1].errback(BrokerUnavailable(message))
        if self._wants_connection and self.on_state is not None:
            self.on_state(False)

    def _come_back(self) -> None:
        self._reconnect = None
        if not (self.server.running and self._wants_connection) or self.connected:
            return
        self.connected = True
        if self.on_state is not None:
            self.on_state(True)

    def kill(self) -> None:
        """The connection is lost (as after ``CLIENT KILL``); the client
        reconnects after ``reconnect_delay`` seconds, as ``RedisClient`` does."""
        self._lose("the connection was killed")
        if self._reconnect is None or not self._reconnect.active():
            self._reconnect = self.server.clock.callLater(
                self.reconnect_delay, self._come_back
            )

    def close(self) -> None:
        """Closed for good: what is in flight fails, nothing reconnects."""
        self._wants_connection = False
        if self._reconnect is not None and self._reconnect.active():
            self._reconnect.cancel()
        self._reconnect = None
        self._lose("the client was stopped")
        if self in self.server.clients:
            self.server.clients.remove(self)

    def stop(self) -> Deferred[None]:
        """As ``RedisClient.stop``."""
        self.close()
        return succeed(None)
