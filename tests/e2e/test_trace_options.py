"""Teaching mode's options: ``--trace packets`` (or ``--capture``) and
``--capture-file`` on the server and the client, and what is imported
(and attached) when they are not given."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sockchat.client import _parser
from sockchat.tap import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--responder", "echo", *args])
    return options


@pytest.mark.parametrize(
    ("args", "trace", "capture"),
    [
        ((), False, False),
        (("--trace",), True, False),
        (("--trace", "packets"), True, True),
        (("--trace=packets",), True, True),
        (("--capture",), True, True),
        (("--trace", "--capture"), True, True),
        (("--capture-file", "x.pcap"), True, True),
        (("--trace", "--web", "8080"), True, False),
    ],
)
def test_the_server_reads_trace_packets_as_said(args, trace, capture):
    options = parse(*args)
    assert bool(options["trace"]) is trace
    assert bool(options["capture"]) is capture


def test_packets_is_a_value_of_trace_only():
    # A word "packets" after another option is that option's value.
    options = Options()
    options.parseOptions(["--trace", "--transcript", "packets", "--responder", "echo"])
    assert options["transcript"] == "packets"
    assert not options["capture"]


@pytest.mark.parametrize(
    ("args", "trace"),
    [
        ((), None),
        (("--trace",), "socket"),
        (("--trace", "packets"), "packets"),
        (("--trace", "--port", "9527"), "socket"),
    ],
)
def test_the_client_reads_trace_packets_as_said(args, trace):
    assert _parser().parse_args(list(args)).trace == trace


#: Builds the server as twistd would, then says which teaching modules
#: were imported and what observes a conversation.
BUILD = """
import sys
from sockchat import tap
options = tap.Options()
options.parseOptions(sys.argv[1:])
top = tap.makeService(options)
factory = [s for s in top if hasattr(s, "factory")][0].factory
print(sorted(m for m in sys.modules if m.startswith("sockchat._teaching")))
print([type(o).__name__ for o in factory.observers("tcp", 1)])
"""


def built(*args: str) -> tuple[str, str]:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            BUILD,
            "--port",
            "tcp:0:interface=127.0.0.1",
            "--responder",
            "echo",
            "--web",
            "tcp:0:interface=127.0.0.1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    modules, observers = done.stdout.splitlines()[-2:]
    return modules, observers


@pytest.mark.slow
def test_without_trace_nothing_of_teaching_mode_is_imported_or_attached():
    modules, observers = built()
    assert modules == "[]"
    assert observers == "['Metrics']"


@pytest.mark.slow
def test_trace_without_packets_imports_no_capture():
    modules, observers = built("--trace")
    assert "sockchat._teaching.tracing" in modules
    for capture in ("capture", "packet_trace", "bpf", "pcap"):
        assert f"sockchat._teaching.{capture}'" not in modules
    assert observers == "['Metrics', 'TcpTrace']"


@pytest.mark.slow
def test_trace_packets_imports_the_capture():
    modules, _ = built("--trace", "packets")
    assert "sockchat._teaching.capture'" in modules
    assert "sockchat._teaching.packet_trace'" in modules
