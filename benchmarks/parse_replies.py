#!/usr/bin/env python3
"""The broker's two reply parsers, side by side, in one process.

    .venv/bin/python benchmarks/parse_replies.py [--rounds 5] [--n 20000]

For replies the broker gets (an ``XREADGROUP`` of one entry and of ten,
``:1``, ``+OK``, five small replies in one read), it times the pure-Python
``ReplyParser``, sockchat's ``HiredisReplyParser`` and hiredis's bare
``Reader``, in interleaved rounds, and prints the medians and the ratio of
the pure parser's time to the wrapped hiredis's.  On a shared machine only
the ratios mean something.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import hiredis

from sockchat._broker.resp import HiredisReplyParser, ReplyParser


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


LINE = json.dumps(
    {
        "v": 1,
        "kind": "line",
        "instance": "i1",
        "conv": 17,
        "text": "hello there, how are you?",
        "peer": "127.0.0.1:50312",
        "opening": False,
    }
).encode()


def xreadgroup(entries: int) -> bytes:
    one = (
        b"*2\r\n%s*2\r\n%s%s" % (bulk(b"1700000000000-%d" % n), bulk(b"m"), bulk(LINE))
        for n in range(entries)
    )
    return (
        b"*1\r\n*2\r\n"
        + bulk(b"sockchat:work:workers")
        + b"*%d\r\n" % entries
        + b"".join(one)
    )


REPLIES = {
    "XREADGROUP, 1 entry": xreadgroup(1),
    "XREADGROUP, 10 entries": xreadgroup(10),
    ":1": b":1\r\n",
    "+OK": b"+OK\r\n",
    "5 small replies": b"+OK\r\n:1\r\n$2\r\nab\r\n:3\r\n*-1\r\n",
}


def per_reply(feed: Callable[[bytes], object], data: bytes, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        feed(data)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    print(
        "| reply | pure (µs) | hiredis, held to the rules (µs) | bare hiredis (µs) "
        "| pure / held |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, data in REPLIES.items():
        pure, held, bare = ReplyParser(), HiredisReplyParser(), hiredis.Reader()

        def bare_feed(data: bytes, reader: hiredis.Reader = bare) -> None:
            reader.feed(data)
            while reader.gets() is not False:
                pass

        times: dict[str, list[float]] = {"pure": [], "held": [], "bare": []}
        ratios = []
        for _ in range(args.rounds):
            times["pure"].append(per_reply(pure.feed, data, args.n))
            times["held"].append(per_reply(held.feed, data, args.n))
            times["bare"].append(per_reply(bare_feed, data, args.n))
            ratios.append(times["pure"][-1] / times["held"][-1])
        p, h, b = (statistics.median(times[k]) for k in ("pure", "held", "bare"))
        ratio = statistics.median(ratios)
        print(f"| {name} | {p:.2f} | {h:.2f} | {b:.2f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
