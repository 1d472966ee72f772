"""The broker's Lua scripts, run atomically by Redis.

A ``Script`` is a name and its Lua text; its SHA1 is what ``EVALSHA``
names.  ``run_script`` sends ``EVALSHA`` and, when the server does not
have the script cached (``NOSCRIPT``: it restarted, or it never saw it),
``EVAL`` with the text, which also caches it.  ``tests/fakeredis.py`` runs
a Python twin of every script here, and the differential test
(tests/test_redis_real.py) checks each twin against the real Lua.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from sockchat._broker.redis import IRedis, RedisError

__all__ = ["POP_OR_WAIT", "SCRIPTS", "Script", "run_script"]

Arg = str | bytes | int | float


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
    """Run *script* with *keys* and *args*: ``EVALSHA``, then ``EVAL`` if the
    server does not know the script (``NOSCRIPT``)."""
    d = redis.command("EVALSHA", script.sha1, len(keys), *keys, *args)

    def not_cached(failure: Failure) -> Deferred[Any] | Failure:
        if failure.check(RedisError) and str(failure.value).startswith("NOSCRIPT"):
            return redis.command("EVAL", script.lua, len(keys), *keys, *args)
        return failure

    return d.addErrback(not_cached)


#: Pairing: take the first waiting client whose instance is alive, or wait.
#:
#: KEYS[1] is the waiting list.  ARGV[1] is this client's entry, a JSON
#: object with "instance" and "conv"; ARGV[2] the prefix of the instances'
#: heartbeat keys (``sockchat:instance:``); ARGV[3] ``front`` or ``back``.
#: Entries are popped from the head until one whose instance's heartbeat
#: key exists, which is returned.  Popped entries of dead instances,
#: entries that are not such JSON objects, and an entry equal to ARGV[1]
#: (a client is never its own partner) are dropped.  If none is left,
#: ARGV[1] is pushed (at the head for ``front``: a client whose partner
#: left before a word keeps its place) and the reply is nil.
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

#: Every script, by name (the fake registers a twin for each).
SCRIPTS: dict[str, Script] = {s.name: s for s in (POP_OR_WAIT,)}
