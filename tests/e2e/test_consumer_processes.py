"""Real operator and worker processes on a real redis-server (slow).

The instance side is tests/broker_instance.py's double, over a plain
socket: two piped ``python -m sockchat.operator`` share one queue and one
killed with SIGKILL while holding a line loses nothing; a clean quit hands
its line back at once; a worker killed mid-answer is replaced by another;
and the shells' one-line errors.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from broker_instance import FakeInstance, now
from twisted.internet import reactor

from sockchat._broker.redisbroker import RedisBroker
from sockchat._broker.wire import CLAIM_AFTER, PROTOCOL, Keys, Timings

from ports import free_port
from processes import Reader, Terminal
from redis_server import RedisServer, SyncRedis  # the fixtures are conftest's

pytestmark = pytest.mark.slow

OPERATOR = [sys.executable, "-m", "sockchat.operator"]
WORKER = [sys.executable, "-m", "sockchat.worker"]
#: Seconds to wait for anything that should happen at once.
SOON = 10.0


def fake_instance(server: RedisServer) -> tuple[FakeInstance, SyncRedis]:
    """An instance's doings at the broker, through the real Redis broker
    over a blocking connection; alive for the whole test."""
    redis = SyncRedis(server.port)
    broker = RedisBroker(reactor, redis, timings=Timings(heartbeat_ttl=120))  # type: ignore[arg-type]
    return FakeInstance(broker, broker.timings), redis


class Process:
    """A consumer process whose output is read as it comes."""

    def __init__(self, args: list[str], *, cwd: Path | None = None, **env: str) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env={**os.environ, **env},
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.out = Reader(self.proc.stdout)
        self.err = Reader(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def end_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(SOON)

    def wait(self) -> int:
        return self.proc.wait(SOON)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(SOON)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def started():
    """Processes started by the test, stopped by pid at the end."""
    processes: list[Process] = []
    yield processes
    for p in processes:
        p.stop()


@pytest.fixture
def instance(redis_server: RedisServer):
    made, redis = fake_instance(redis_server)
    yield made
    redis.stop()


def holder(instance: FakeInstance, group: str, entry: str) -> int:
    """The pid of the consumer that holds *entry* (waits until one does)."""
    deadline = time.monotonic() + SOON
    while time.monotonic() < deadline:
        for held, consumer in instance.pending(group):
            if held == entry:
                return int(consumer.split("-")[-2])  # host-pid-random
        time.sleep(0.05)
    raise AssertionError(f"nobody took {entry}")


def online(instance: FakeInstance, group: str, count: int) -> None:
    deadline = time.monotonic() + SOON
    while len(instance.consumers(group)) < count:
        assert time.monotonic() < deadline, f"{count} {group} did not come online"
        time.sleep(0.05)


def inbox(instance: FakeInstance, count: int, timeout: float = SOON) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"the inbox has only {got}"
        got += instance.inbox()
        time.sleep(0.05)
    return got


def operator(started: list[Process], server: RedisServer, name: str) -> Process:
    p = Process([*OPERATOR, "--broker", server.url, "--name", name])
    started.append(p)
    p.out.until(b"sockchat operator " + name.encode())
    return p


def test_an_operator_killed_holding_a_line_loses_nothing(
    redis_server: RedisServer,
    instance: FakeInstance,
    started: list[Process],
) -> None:
    instance.connect(1, "127.0.0.1:5001")
    ann = operator(started, redis_server, "ann")
    bob = operator(started, redis_server, "bob")
    online(instance, "operators", 2)
    entry = instance.work("operators", 1, "is anyone there?")
    first = holder(instance, "operators", entry)
    doomed, survivor = (ann, bob) if first == ann.pid else (bob, ann)
    doomed.out.until(b": is anyone there?")
    doomed.kill()
    killed = time.monotonic()
    survivor.out.until(b"(i1/1, 127.0.0.1:5001): is anyone there?", CLAIM_AFTER + 8)
    # It waited for the dead one's last touch to be CLAIM_AFTER old.
    assert time.monotonic() - killed > CLAIM_AFTER - 2.5
    survivor.type("yes, I am")
    try:
        [answer] = inbox(instance, 1)
    except AssertionError:
        survivor.end_input()
        time.sleep(1)
        raise AssertionError(
            f"{survivor.out.rest()!r} {survivor.err.rest()!r}"
        ) from None
    name = "bob" if survivor is bob else "ann"
    assert (answer["kind"], answer["entry"], answer["text"], answer["by"]) == (
        "answer",
        entry,
        "yes, I am",
        f"operator {name}",
    )
    # The next line goes to the survivor, the only operator left.
    second = instance.work("operators", 1, "thanks")
    survivor.out.until(b": thanks")
    survivor.type("you are welcome")
    assert [m["entry"] for m in inbox(instance, 1)] == [second]


def test_an_operator_that_quits_hands_its_line_back_at_once(
    redis_server: RedisServer,
    instance: FakeInstance,
    started: list[Process],
) -> None:
    instance.connect(2, "127.0.0.1:5002")
    ann = operator(started, redis_server, "ann")
    online(instance, "operators", 1)
    entry = instance.work("operators", 2, "hand me on")
    ann.out.until(b": hand me on")
    ann.end_input()  # piped, with no answer left: it quits
    assert ann.wait() == 0
    assert b"handed back 1 line(s)" in ann.err.rest()
    took = time.monotonic()
    bob = operator(started, redis_server, "bob")
    bob.out.until(b"(i1/2, 127.0.0.1:5002): hand me on")
    assert time.monotonic() - took < CLAIM_AFTER / 2  # not after CLAIM_AFTER
    bob.type("here I am")
    assert [(m["entry"], m["by"]) for m in inbox(instance, 1)] == [
        (entry, "operator bob")
    ]


def test_piped_answers_wait_for_the_lines_they_answer(
    redis_server: RedisServer,
    instance: FakeInstance,
    started: list[Process],
) -> None:
    ann = operator(started, redis_server, "ann")
    online(instance, "operators", 1)
    ann.type("first")
    ann.type("second")
    ann.end_input()
    time.sleep(0.5)
    entries = [instance.work("operators", 3, text) for text in ("a", "b")]
    answers = inbox(instance, 2)
    assert [(m["entry"], m["text"]) for m in answers] == list(
        zip(entries, ["first", "second"], strict=True)
    )
    assert ann.wait() == 0


def test_an_operator_at_a_terminal_answers_and_ctrl_d_hands_back(
    redis_server: RedisServer,
    instance: FakeInstance,
) -> None:
    instance.connect(5, "127.0.0.1:5005")
    terminal = Terminal(*OPERATOR, "--broker", redis_server.url, "--name", "tty")
    try:
        terminal.screen.until(b"sockchat operator tty")
        online(instance, "operators", 1)
        first = instance.work("operators", 5, "typed?")
        terminal.screen.until(b"client 1 (i1/5, 127.0.0.1:5005): typed?")
        terminal.screen.until(b"server --> client 1: ")
        terminal.type("yes, typed\n")
        assert [(m["entry"], m["text"]) for m in inbox(instance, 1)] == [
            (first, "yes, typed")
        ]
        second = instance.work("operators", 5, "still there?")
        terminal.screen.until(b"server --> client 1: ")
        terminal.type("\x04")  # Ctrl-D
        terminal.screen.until(b"handed back 1 line(s)")
        code = terminal.proc.wait(SOON)  # it quits by itself
    finally:
        if terminal.proc.poll() is None:
            terminal.proc.send_signal(signal.SIGTERM)
        terminal.close()
    assert code == 0
    # Handed back: it waits for anyone, at once.
    assert instance.pending("operators") == []
    view = now(instance.broker.queue_view("operators", CLAIM_AFTER))
    assert [q.entry for q in view] == [second]


SLOW_BOT = """\
import os
import re

from twisted.internet import reactor, task


async def respond(conversation, text):
    await task.deferLater(reactor, float(os.environ["BOT_DELAY"]))
    return f"{os.getpid()} says {text}"
"""


def test_a_worker_killed_mid_answer_is_replaced_by_another(
    redis_server: RedisServer,
    instance: FakeInstance,
    started: list[Process],
    tmp_path: Path,
) -> None:
    (tmp_path / "slowbot.py").write_text(SLOW_BOT)
    args = [*WORKER, "--broker", redis_server.url, "slowbot:respond"]
    stuck = Process(args, cwd=tmp_path, BOT_DELAY="60")
    started.append(stuck)
    stuck.err.until(b"up to 32 lines at once")
    entry = instance.work("workers", 1, "hello")
    assert holder(instance, "workers", entry) == stuck.pid
    quick = Process(args, cwd=tmp_path, BOT_DELAY="0")
    started.append(quick)
    quick.err.until(b"up to 32 lines at once")
    stuck.kill()
    [answer] = inbox(instance, 1, CLAIM_AFTER + 8)
    assert (answer["entry"], answer["text"]) == (entry, f"{quick.pid} says hello")
    assert answer["by"].startswith("worker ")
    time.sleep(1)
    assert instance.inbox() == []  # answered once


def test_a_worker_that_quits_hands_back_and_says_it_is_gone(
    redis_server: RedisServer,
    instance: FakeInstance,
    started: list[Process],
    tmp_path: Path,
) -> None:
    (tmp_path / "slowbot.py").write_text(SLOW_BOT)
    args = [*WORKER, "--broker", redis_server.url, "slowbot:respond"]
    worker = Process(args, cwd=tmp_path, BOT_DELAY="60")
    started.append(worker)
    worker.err.until(b"up to 32 lines at once")
    entry = instance.work("workers", 1, "hello")
    holder(instance, "workers", entry)
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait() == 0
    assert instance.consumers("workers") == []
    assert instance.pending("workers") == []  # anyone's next look takes it
    assert instance.queue_length("workers") == 1


def test_a_worker_goes_on_after_redis_restarts_empty(
    redis_server: RedisServer,
    started: list[Process],
    tmp_path: Path,
) -> None:
    (tmp_path / "slowbot.py").write_text(SLOW_BOT)
    args = [*WORKER, "--broker", redis_server.url, "slowbot:respond"]
    worker = Process(args, cwd=tmp_path, BOT_DELAY="0")
    started.append(worker)
    worker.err.until(b"up to 32 lines at once")
    redis_server.stop()
    worker.err.until(b"lost the broker")
    redis_server.start()  # no persistence: no stream, no group, no keys
    instance, redis = fake_instance(redis_server)
    try:
        online(instance, "workers", 1)  # it came back, and says so
        entry = instance.work("workers", 1, "again")
        [answer] = inbox(instance, 1)
        assert (answer["entry"], answer["text"]) == (entry, f"{worker.pid} says again")
    finally:
        redis.stop()
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait() == 0
    log = worker.err.rest().decode()
    assert log.count("lost the broker") == 0, log  # (read above): once
    assert log.count("the broker is back") == 1, log


def test_an_unreachable_broker_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()  # nobody listens on it
    for command in (OPERATOR, [*WORKER, "examples.bot:FaqBot"]):
        done = subprocess.run(
            [*command, "--broker", f"redis://127.0.0.1:{port}/0"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        assert done.returncode == 1
        lines = done.stderr.decode().splitlines()
        assert lines[-1].endswith(
            f"cannot reach the broker at redis://127.0.0.1:{port}/0: Connection refused"
        ), lines
        assert "Traceback" not in done.stderr.decode()


def test_bad_input_is_one_line(
    redis_server: RedisServer,
    instance: FakeInstance,
) -> None:
    def run(*args: str) -> tuple[int, str]:
        done = subprocess.run(
            list(args), stdin=subprocess.DEVNULL, capture_output=True, timeout=30
        )
        return done.returncode, done.stderr.decode().strip().splitlines()[-1]

    code, line = run(*OPERATOR, "--broker", "http://example.com/")
    assert code == 1
    assert line.startswith("sockchat.operator: --broker http://example.com/: ")
    code, line = run(*WORKER, "--broker", redis_server.url, "nosuchmodule:thing")
    assert (code, line) == (
        1,
        "sockchat.worker: nosuchmodule:thing: there is no module named "
        "'nosuchmodule' (is it installed, or in the current directory?)",
    )
    other = PROTOCOL + 1
    redis = SyncRedis(redis_server.port)
    now(redis.command("SET", Keys().protocol, str(other)))
    redis.stop()
    code, line = run(*OPERATOR, "--broker", redis_server.url)
    assert (code, line) == (
        1,
        f"sockchat.operator: the broker at {redis_server.url} speaks broker "
        f"protocol {other}; this sockchat speaks {PROTOCOL}: run the same sockchat "
        "version everywhere",
    )


def test_two_operators_across_two_instances_see_who_holds_what(
    redis_server: RedisServer, started: list[Process]
) -> None:
    """Real instances and operators: /list names the operator that holds a
    line and says which one waits in the queue; /to takes a queued line."""
    import re

    from processes import Server, raw_connect, recv_lines

    args = ("--responder", "operators", "--broker", redis_server.url)
    with Server(*args) as one, Server(*args) as two:
        ann = operator(started, redis_server, "ann")
        look, redis = fake_instance(redis_server)  # to see who is online
        online(look, "operators", 1)
        c1 = raw_connect(one.port)
        recv_lines(c1, 1)  # the welcome
        c1.sendall(b"one\n")
        ann.out.until(b"(i1/1, 127.0.0.1:")
        bob = operator(started, redis_server, "bob")
        online(look, "operators", 2)
        c2 = raw_connect(two.port)
        recv_lines(c2, 1)
        c2.sendall(b"two\n")  # ann holds her one line: bob takes it
        bob.out.until(b"(i2/1, 127.0.0.1:")
        c3 = raw_connect(one.port)
        recv_lines(c3, 1)
        c3.sendall(b"three\n")  # both hold one: it waits
        deadline = time.monotonic() + SOON
        while True:
            time.sleep(1.2)  # a look at the queue
            ann.type("/list")
            listing = ann.out.until(b"connected, ").decode()
            listing += ann.out.until(b"server --> client ").decode()
            if "waiting in the queue" in listing or time.monotonic() > deadline:
                break
        assert re.search(
            r"\(i2/1, 127\.0\.0\.1:\d+\) held by operator bob: \"two\"", listing
        ), listing
        queued = re.search(
            r"client (\d+) \(i1/2, 127\.0\.0\.1:\d+\) waiting in the queue: \"three\"",
            listing,
        )
        assert queued, listing
        ann.type(f"/to {queued[1]} you waited, here I am")
        said = c3.makefile("rb")
        answer = said.readline()
        if answer.startswith(b"!info queued: "):  # i1 had not seen them yet
            answer = said.readline()
        assert answer == b"you waited, here I am\n"
        for sock in (c1, c2, c3):
            sock.close()
        redis.stop()
    assert "conversation 2: operator ann answers" in one.output.decode()


def test_an_operator_at_a_terminal_keeps_its_line_when_an_instance_dies(
    redis_server: RedisServer,
) -> None:
    """Issue 24 item 8, in a real terminal (tmux): when the instance of the
    client being answered dies, the prompt keeps what was typed; after
    Enter the next client's prompt comes; a log line (the broker lost) is
    printed on a line of its own, not onto the prompt."""
    import shlex

    from processes import Tmux

    one, redis_one = fake_instance(redis_server)
    two, redis_two = fake_instance(redis_server)
    command = shlex.join([*OPERATOR, "--broker", redis_server.url, "--name", "tty"])
    term = Tmux(command)
    try:
        term.until("sockchat operator tty")
        online(one, "operators", 1)
        one.connect(1, "127.0.0.1:5001")
        one.work("operators", 1, "hello from one")
        term.until("server --> client 1: ")
        two.connect(1, "127.0.0.1:5002")
        two.work("operators", 1, "hello from two")  # waits: the operator holds one
        term.type("half an answer")
        term.until("server --> client 1: half an answer")
        one.die()  # kill -9 of i1: its heartbeat and its clients go
        term.until("server --> nobody (client 1 left; Enter): half an answer")
        term.enter()
        shown = term.until(re.compile(r"server --> client 2: \s*\Z"))
        assert '"half an answer" was not sent' in shown
        term.type("more")
        term.until("server --> client 2: more")
        redis_server.stop()
        shown = term.until(
            re.compile(r"lost the broker.*\n(.*\n)*server --> client 2: more")
        )
        for line in shown.splitlines():
            assert not ("server -->" in line and "sockchat.operator:" in line), shown
    finally:
        redis_server.stop()
        term.close()
        for redis in (redis_one, redis_two):
            redis.stop()
