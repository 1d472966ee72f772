"""examples/cluster/ runs as README's "Scaling out" says (issue 13, item 6).

Each test starts ``python examples/cluster/run.py --responder ...`` (a real
redis-server, two real twistd instances behind a real haproxy with
send-proxy, and real workers), runs the real client through haproxy with
the command run.py prints, stops run.py with Ctrl-C (SIGINT) and checks
that every process it listed is gone.

Each client connects from an address of its own in 127.0.0.0/8
(``bindAddress=127.0.0.N``), while haproxy connects to the instances from
127.0.0.1: so an instance's log naming 127.0.0.N proves that it saw the
client's real address through the PROXY protocol.  haproxy balances round
robin, so two clients that connect one after the other reach the two
instances; the instances' logs say which reached which, and the tests
check it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import Reader, need_tool

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "examples" / "cluster" / "run.py"
LISTED = re.compile(r"^  (\S+(?: \S+)?)\s+pid (\d+)\s+(.*?)  log (\S+)$", re.M)
FOLDER = re.compile(r"^sockchat cluster \(--responder \w+\) in (.+):$", re.M)
COMMAND = re.compile(r"^  ([\w ]+): (.+)$", re.M)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has ended; only its parent has not reaped it yet.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Cluster:
    """``examples/cluster/run.py`` as a person runs it, stopped with Ctrl-C."""

    def __init__(self, responder: str, *extra: str) -> None:
        need_tool("redis-server", "redis-server")
        need_tool("haproxy", "haproxy")
        self.proc = subprocess.Popen(
            [sys.executable, str(RUN), "--responder", responder, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.reader = Reader(self.proc.stdout)
        self.summary = self.reader.until(b"Ctrl-C stops", timeout=90).decode()
        self.seen = ""  # what run.py printed after its summary, read so far
        self.folder = Path(FOLDER.search(self.summary).group(1))
        self.pids = {name: int(pid) for name, pid, _, _ in LISTED.findall(self.summary)}
        self.logs = {
            name: self.folder / log for name, _, _, log in LISTED.findall(self.summary)
        }
        self.commands = {
            name: shlex.split(command)
            for name, command in COMMAND.findall(self.summary)
            if name == "client" or name.startswith("operator ")
        }

    def until(self, pattern: bytes | re.Pattern[bytes], timeout: float) -> str:
        """Read run.py's output up to *pattern*; ``seen`` keeps it all."""
        more = self.reader.until(pattern, timeout).decode(errors="replace")
        self.seen += more
        return more

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")

    def stop(self) -> str:
        """Ctrl-C; what run.py printed from then on."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        finally:
            left = [pid for pid in self.pids.values() if alive(pid)]
            for pid in left:  # never leave them behind, even when failing
                os.kill(pid, signal.SIGKILL)
        rest = self.reader.rest().decode(errors="replace")
        self.proc.stdout.close()
        assert left == [], f"left running: {left}; run.py said: {rest}"
        return rest

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


def client(cluster: Cluster, address: str, stdin: bytes) -> subprocess.Popen[bytes]:
    """The client command run.py printed, from *address*, piped."""
    command = list(cluster.commands["client"])
    at = command.index("--connect") + 1
    command[at] += f":bindAddress={address}"
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(stdin)
    proc.stdin.flush()
    return proc


def finish(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """Its answers (stdout), then its notices (stderr); it must exit 0."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, out, err)
    return (out + b"\n" + err).decode(errors="replace")


STARTED = re.compile(r"\bconversation \d+ started with (\S+)")


def starts(cluster: Cluster) -> dict[str, list[str]]:
    """The peers each instance has logged a conversation's start with (at a
    conversation's first line: a health check, which says nothing, is not
    one)."""
    return {
        name: STARTED.findall(cluster.log(name))
        for name in ("instance one", "instance two")
    }


def new_start(
    cluster: Cluster, before: dict[str, list[str]], timeout: float = 15.0
) -> tuple[str, str]:
    """The one instance that logged one more start since *before*, and the
    peer it logged."""
    deadline = time.monotonic() + timeout
    while True:
        now = starts(cluster)
        grown = [name for name in now if len(now[name]) > len(before[name])]
        if grown:
            assert len(grown) == 1, f"both instances started one: {now}"
            (name,) = grown
            assert len(now[name]) == len(before[name]) + 1, now
            return name, now[name][-1]
        assert time.monotonic() < deadline, f"no instance logged a start: {now}"
        time.sleep(0.1)


def test_workers_answer_clients_of_both_instances_and_everything_stops():
    with Cluster("workers") as cluster:
        assert set(cluster.pids) == {
            "redis-server",
            "instance one",
            "instance two",
            "haproxy",
            "worker 1",
            "worker 2",
        }
        # haproxy has health-checked each instance by now (every 2 s, with a
        # PROXY v2 LOCAL header): the checks take no conversation number.
        time.sleep(2.5)
        # One after the other, so that round robin sends them to both.
        before = starts(cluster)
        first = finish(client(cluster, "127.0.0.2", b"port\nq\n"))
        one, _ = new_start(cluster, before)
        before = starts(cluster)
        second = finish(client(cluster, "127.0.0.3", b"tcp\nq\n"))
        two, _ = new_start(cluster, before)
        assert {one, two} == {"instance one", "instance two"}
        # The bot, in a worker, answered each; its answers went back to the
        # instance that holds the client.
        assert "sockchat listens on 127.0.0.1:9527" in first, first
        assert "TCP gives an ordered byte stream" in second, second
        # Its started hook, in a worker, greeted each with its real address.
        assert "hello, 127.0.0.2:" in first, first
        assert "hello, 127.0.0.3:" in second, second
        for name in ("instance one", "instance two"):
            log = cluster.log(name)
            assert re.search(r"\bconversation 1 started with 127\.0\.0\.[23]:", log), (
                log
            )
            # No "Starting factory <...>" noise, in the instances or the workers.
            assert "Starting factory" not in log, log
        for name in ("worker 1", "worker 2"):
            assert "Starting factory" not in cluster.log(name), cluster.log(name)
        folder = cluster.folder
        assert folder.is_dir()
        said = cluster.stop()
    try:
        # The logs stay until the user removes them, and run.py says where.
        assert f"stopped. The logs are in {folder} (rm -r it when done)." in said
        assert (folder / "one.log").read_text().count("sockchat listening on") == 1
    finally:
        shutil.rmtree(folder)


def restarted(cluster: Cluster, name: str, timeout: float = 60.0) -> int:
    """Wait for run.py to say that *name* started again; its new pid (which
    the cluster's stop must end too)."""
    said = cluster.until(
        re.compile(rf"{name} started again: pid \d+".encode()), timeout
    )
    pid = int(re.findall(rf"{name} started again: pid (\d+)", said)[-1])
    cluster.pids[f"{name} (again)"] = pid
    return pid


def test_a_worker_killed_by_9_is_reported_started_again_and_the_rest_goes_on(tmp_path):
    with Cluster("workers", "--dir", str(tmp_path)) as cluster:
        old = cluster.pids["worker 1"]
        os.kill(old, signal.SIGKILL)
        new = restarted(cluster, "worker 1")
        assert new != old
        # Said what died, how, and where its log is; nothing else stopped.
        report = (
            f"run.py: worker 1 (pid {old}) was killed by SIGKILL; its log "
            f"({tmp_path / 'worker-1.log'}) ends: "
        )
        assert report in cluster.seen, cluster.seen
        assert "Starting it again." in cluster.seen
        assert "stopping" not in cluster.seen
        for name, pid in cluster.pids.items():
            if name != "worker 1":
                assert alive(pid), f"{name} ({pid}) is gone"
        # Clients are answered, by the other worker or the new one.
        answered = finish(client(cluster, "127.0.0.2", b"port\nq\n"))
        assert "sockchat listens on 127.0.0.1:9527" in answered, answered
        cluster.stop()
    log = (tmp_path / "worker-1.log").read_text()
    assert "--- run.py: started again at " in log, log


def test_with_no_restart_a_killed_worker_is_left_down_and_the_rest_goes_on(tmp_path):
    with Cluster("workers", "--dir", str(tmp_path), "--no-restart") as cluster:
        os.kill(cluster.pids["worker 2"], signal.SIGKILL)
        cluster.until(b"Left down (--no-restart); the rest goes on.", 30)
        assert "was killed by SIGKILL" in cluster.seen
        answered = finish(client(cluster, "127.0.0.2", b"tcp\nq\n"))
        assert "TCP gives an ordered byte stream" in answered, answered
        assert alive(cluster.pids["worker 1"])
        assert not alive(cluster.pids["worker 2"])
        said = cluster.stop()
    assert "stopped." in said


def test_run_py_with_a_python_without_sockchat_says_which_python_to_use(tmp_path):
    """A bare Python (a venv with nothing installed): one line, exit 1."""
    bare = tmp_path / "bare"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True
    )
    done = subprocess.run(
        [str(bare / "bin" / "python"), str(RUN), "--responder", "pair"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"run.py: this Python ({bare / 'bin' / 'python'}) has no sockchat installed; "
    ), line
    venv = ROOT / ".venv" / "bin" / "python"
    if venv.exists():
        assert f"run it with the one that has: {venv} {RUN}" in line, line
    else:
        assert ".venv/bin/pip install ." in line, line


def test_two_piped_operators_answer_clients_of_both_instances(tmp_path):
    logs = tmp_path / "cluster"
    with Cluster("operators", "--dir", str(logs)) as cluster:
        assert set(cluster.commands) == {"client", "operator ann", "operator bob"}
        operators = {}
        for name in ("ann", "bob"):
            operators[name] = subprocess.Popen(
                cluster.commands[f"operator {name}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            # One answer per line it takes; more than it can be given.
            operators[name].stdin.write(
                b"".join(f"{name} answers {n}\n".encode() for n in range(1, 4))
            )
            operators[name].stdin.flush()
        try:
            before = starts(cluster)
            first = finish(client(cluster, "127.0.0.2", b"hello\nq\n"))
            one, _ = new_start(cluster, before)
            before = starts(cluster)
            second = finish(client(cluster, "127.0.0.3", b"hi again\nq\n"))
            two, _ = new_start(cluster, before)
            assert {one, two} == {"instance one", "instance two"}
            answer = re.compile(r"^(ann|bob) answers \d$", re.M)
            assert answer.search(first), first
            assert answer.search(second), second
        finally:
            for proc in operators.values():
                proc.stdin.close()  # end of input: a clean quit
            for proc in operators.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(15)
                proc.stdout.close()
        cluster.stop()
    # --dir keeps the logs, with the instances' and haproxy's own.
    assert {p.name for p in logs.iterdir()} >= {
        "one.log",
        "two.log",
        "haproxy.log",
        "haproxy.cfg",
        "redis.log",
    }


def pair_across(cluster: Cluster) -> tuple[str, str, dict[str, str]]:
    """Alice (from 127.0.0.2), then Bob (127.0.0.3) talk as a pair, and
    each quits; return what each saw and, per instance, the peer it logged."""
    before = starts(cluster)
    alice = client(cluster, "127.0.0.2", b"hello from alice\nq\n")
    bob = None
    try:
        # She says her line while she waits: that logs her start.
        alice_at, alice_peer = new_start(cluster, before, timeout=20)
        before = starts(cluster)
        bob = client(cluster, "127.0.0.3", b"hello from bob\n")
        to_alice = finish(alice)
        to_bob = finish(bob)  # his end of input sends q, if he still talks
        bob_at, bob_peer = new_start(cluster, before)
    finally:
        for proc in (alice, bob):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    return to_alice, to_bob, {alice_at: alice_peer, bob_at: bob_peer}


def test_a_pair_spans_the_two_instances_which_see_the_real_addresses():
    with Cluster("pair") as cluster:
        assert "worker 1" not in cluster.pids
        to_alice, to_bob, peers = pair_across(cluster)
        cluster.stop()
    assert set(peers) == {"instance one", "instance two"}
    assert "hello from bob" in to_alice, to_alice
    assert "hello from alice" in to_bob, to_bob
    # haproxy connects from 127.0.0.1; the clients from 127.0.0.2 and .3.
    assert (
        peers["instance one"].rsplit(":", 1)[0]
        != peers["instance two"].rsplit(":", 1)[0]
    )
    assert sorted(peer.rsplit(":", 1)[0] for peer in peers.values()) == [
        "127.0.0.2",
        "127.0.0.3",
    ]


class Raw:
    """A raw line connection through haproxy, from *address*."""

    def __init__(self, port: int, address: str) -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(address, 0)
        )
        self.sock.setblocking(False)
        self.reader = Reader(self.sock.makefile("rb", buffering=0))

    def say(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def until(self, text: bytes, timeout: float = 15.0) -> bytes:
        return self.reader.until(text, timeout)

    def close(self) -> None:
        self.reader.stream.close()
        self.sock.close()


def test_a_line_said_while_waiting_reaches_the_partner_at_once():
    with Cluster("pair") as cluster:
        port = int(cluster.commands["client"][-1].rsplit(":", 1)[1])
        alice = Raw(port, "127.0.0.2")
        bob = None
        try:
            alice.until(b"!info waiting: ")
            alice.say("hello from alice")  # kept for her partner
            bob = Raw(port, "127.0.0.3")
            bob.until(b"!info listen: ")  # alice waited: she speaks first
            paired = bob.until(b"!info paired: ") + bob.until(b"\n")
            assert b"They waited, so they speak first" in paired, paired
            bob.until(b"hello from alice\n")  # at once, before bob says a word
            bob.say("hello from bob")
            alice.until(b"hello from bob\n")
            alice.say("q")
            alice.until(b"!bye quit: ")
            seen = bob.until(b"!bye ", timeout=15) + bob.until(b"\n")
            assert b"!bye partner-left: " in seen, seen
        finally:
            alice.close()
            if bob is not None:
                bob.close()
        cluster.stop()


def test_run_py_says_in_one_line_which_tool_is_missing(tmp_path):
    """Without redis-server on PATH: one line, exit 1, nothing started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("haproxy",):  # haproxy is there; redis-server is not
        (bin_dir / tool).symlink_to("/bin/true")
    done = subprocess.run(
        [sys.executable, str(RUN), "--responder", "pair", "--dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(bin_dir)},
    )
    assert done.returncode == 1, done
    assert done.stderr.strip().splitlines() == [
        "run.py: redis-server is not installed (apt-get install redis-server)"
    ]
    assert list((tmp_path / "c").iterdir()) == []


def test_ha_the_cluster_follows_a_killed_redis_master_within_15_s():
    """``--ha``: a master, a replica and three sentinels.  ``kill -9`` of the
    master: the sentinels promote the replica, and the instances and the
    workers follow it; a client talking throughout gets answers again
    within 15 s of the kill (``!error unavailable`` and its turn back
    meanwhile), and each process says once that its broker failed over."""
    with Cluster("workers", "--ha") as cluster:
        assert {"redis master", "redis replica", "sentinel 1"} <= set(cluster.pids)
        with socket.create_connection(
            ("127.0.0.1", int(cluster.commands["client"][-1].rsplit(":", 1)[1])),
            timeout=20,
        ) as sock:
            lines = sock.makefile("rb")
            lines.readline()  # the welcome
            lines.readline()  # the bot's greeting

            def ask() -> bytes:
                sock.sendall(b"port\r\n")
                return lines.readline()

            assert b"9527" in ask()
            os.kill(cluster.pids["redis master"], signal.SIGKILL)
            killed = time.monotonic()
            answers = []
            while not (answers and b"9527" in answers[-1]):
                assert time.monotonic() - killed < 15, answers
                answers.append(ask())
                time.sleep(0.2)
            assert all(a.startswith(b"!error unavailable") for a in answers[:-1]), (
                answers
            )
        for name in ("instance one", "instance two", "worker 1", "worker 2"):
            assert cluster.log(name).count("failed over: its master") == 1, name
        rest = cluster.stop()
    assert "redis master" in rest
