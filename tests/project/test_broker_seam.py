"""The broker's seam: only the Redis implementation speaks Redis.

Everything else (the instance, the consumers, the pairs, the shells) uses
``IBroker``.  A module outside the Redis implementation that names a Redis
command, in its code or in its prose, has reached through the seam.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "sockchat"

#: The Redis implementation: the broker on Redis, its client, its codec.
REDIS = {
    PACKAGE / "_broker" / "redisbroker.py",
    PACKAGE / "_broker" / "redis.py",
    PACKAGE / "_broker" / "resp.py",
}

#: Redis's commands (7.x), as ``COMMAND LIST`` gives them.  HTTP's methods
#: (``HEAD``, ``POST``...) are left out: the web door names them; and
#: ``TTL``, a field of IP's header that teaching mode names.
_LISTED = """
    APPEND BITCOUNT BITFIELD BITOP BITPOS BLMOVE BLMPOP BLPOP BRPOP BRPOPLPUSH
    BZMPOP BZPOPMAX BZPOPMIN COPY DBSIZE DECR DECRBY DEL DISCARD DUMP EVAL
    EVALSHA EVAL_RO EVALSHA_RO EXEC EXISTS EXPIRE EXPIREAT EXPIRETIME FCALL
    FLUSHALL FLUSHDB GEOADD GEODIST GEOHASH GEOPOS GEOSEARCH GETDEL GETEX
    GETRANGE GETSET HDEL HEXISTS HGET HGETALL HINCRBY HINCRBYFLOAT HKEYS HLEN
    HMGET HMSET HRANDFIELD HSCAN HSET HSETNX HSTRLEN HVALS INCR INCRBY
    INCRBYFLOAT LINDEX LINSERT LLEN LMOVE LMPOP LPOP LPOS LPUSH LPUSHX LRANGE
    LREM LSET LTRIM MGET MSET MSETNX MULTI PERSIST PEXPIRE PEXPIREAT
    PEXPIRETIME PFADD PFCOUNT PFMERGE PSETEX PSUBSCRIBE PTTL PUBLISH RANDOMKEY
    RENAME RENAMENX RPOP RPOPLPUSH RPUSH RPUSHX SADD SCARD SDIFF SDIFFSTORE
    SETEX SETNX SETRANGE SINTER SINTERCARD SINTERSTORE SISMEMBER SMEMBERS
    SMISMEMBER SMOVE SPOP SRANDMEMBER SREM SSCAN STRLEN SUBSCRIBE SUNION
    SUNIONSTORE UNLINK UNWATCH WATCH XACK XADD XAUTOCLAIM XCLAIM XDEL XGROUP
    XINFO XLEN XPENDING XRANGE XREAD XREADGROUP XREVRANGE XSETID XTRIM ZADD
    ZCARD ZCOUNT ZINCRBY ZPOPMIN ZRANGE ZREM ZSCORE SET GET
"""
COMMANDS = frozenset(_LISTED.split())

#: In prose, some commands are also English (or Python) words.
PROSE_WORDS = COMMANDS - {"SET", "GET", "DEL", "EXEC", "DUMP", "COPY"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p not in REDIS)


def named_in_code(path: Path) -> list[str]:
    """String constants of *path*'s code that are a Redis command."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(
            node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        )
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in docstrings:
            continue
        value = node.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if isinstance(value, str) and value.strip() in COMMANDS:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {value!r}")
    return found


def named_in_prose(path: Path) -> list[str]:
    """Redis commands that *path*'s docstrings and comments name."""
    source = path.read_text()
    tree = ast.parse(source)
    prose: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (
            isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            )
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
            and isinstance(node.body[0].value.value, str)
        ):
            prose.append((node.body[0].lineno, node.body[0].value.value))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            prose.append((token.start[0], token.string))
    return [
        f"{path.relative_to(ROOT)}:{line}: {word}"
        for line, text in prose
        for word in re.findall(r"\b[A-Z][A-Z_]{2,}\b", text)
        if word in PROSE_WORDS
    ]


def test_no_module_outside_the_redis_implementation_names_a_redis_command():
    found = [hit for path in modules() for hit in named_in_code(path)]
    assert found == []


def test_no_module_outside_the_redis_implementation_talks_of_redis_commands():
    found = [hit for path in modules() for hit in named_in_prose(path)]
    assert found == []


def test_the_checks_see_a_command_where_there_is_one() -> None:
    where = PACKAGE / "_broker" / "redisbroker.py"  # where they may be
    assert named_in_code(where), "the check finds nothing even where it must"
    assert named_in_prose(where)
