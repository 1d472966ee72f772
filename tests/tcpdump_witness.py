"""tcpdump as a witness: what TCP really did on loopback, for one port.

``Witness(port, folder)`` runs ``tcpdump -i lo -U --immediate-mode -w FILE
'tcp port PORT'`` and waits until tcpdump says it is listening (its
``listening on lo`` line comes after the capture and its filter are on),
so that nothing of the test's traffic is missed.  ``wait_for`` polls the
file (``-U`` writes each packet as it comes) until a condition on the
packets holds; ``stop`` ends tcpdump by its pid.  Then:

- ``packets()``: the file read by sockchat's own pcap reader and parser,
  as ``Tracked`` packets (relative numbers, the sender);
- ``dumped()``: the same file as ``tcpdump -r FILE -nn -tt`` prints it,
  each line read into a ``Dumped``, so the two can be compared.

Other engineers' tests run at the same time on the same ``lo``: the filter
is on this test's own port, which the kernel gave it (bind to port 0).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from attrs import frozen

from sockchat._teaching.packets import (
    Counts,
    Flows,
    Segment,
    TcpFlags,
    Tracked,
    count,
    parse_frame,
)
from sockchat._teaching.pcap import read_pcap

from processes import need_tool

#: tcpdump's letters for the flags (print-tcp.c): "." is ACK.
LETTERS = {
    "S": TcpFlags.SYN,
    "F": TcpFlags.FIN,
    "P": TcpFlags.PSH,
    "R": TcpFlags.RST,
    "U": TcpFlags.URG,
    "W": TcpFlags.CWR,
    "E": TcpFlags.ECE,
    ".": TcpFlags.ACK,
}

LINE = re.compile(
    r"^(?P<time>\d+\.\d+) IP6? (?P<src>\S+)\.(?P<sport>\d+) > "
    r"(?P<dst>\S+)\.(?P<dport>\d+): Flags \[(?P<flags>[^\]]*)\]"
    r"(?:, seq (?P<seq>\d+)(?::(?P<seq_end>\d+))?)?"
    r"(?:, ack (?P<ack>\d+))?"
    r"(?:, win (?P<win>\d+))?"
    r".*?, length (?P<length>\d+)"
)


@frozen
class Dumped:
    """One line of ``tcpdump -r FILE -nn -tt``."""

    time: float
    source: tuple[str, int]
    destination: tuple[str, int]
    flags: TcpFlags
    seq: int | None  # relative after the SYN, as tcpdump prints it
    ack: int | None
    window: int | None
    length: int
    line: str


def parse_dump(text: str) -> list[Dumped]:
    found = []
    for line in text.splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        flags = TcpFlags(0)
        for letter in match["flags"]:
            flags |= LETTERS.get(letter, TcpFlags(0))
        found.append(
            Dumped(
                time=float(match["time"]),
                source=(match["src"], int(match["sport"])),
                destination=(match["dst"], int(match["dport"])),
                flags=flags,
                seq=None if match["seq"] is None else int(match["seq"]),
                ack=None if match["ack"] is None else int(match["ack"]),
                window=None if match["win"] is None else int(match["win"]),
                length=int(match["length"]),
                line=line,
            )
        )
    return found


def counts_of_dump(lines: list[Dumped]) -> Counts:
    return count((d.flags, d.length) for d in lines)


def counts_of_packets(packets: list[Tracked]) -> Counts:
    return count((p.flags, p.data) for p in packets)


class Witness:
    """tcpdump on ``lo`` for one TCP port, its file in *folder*."""

    def __init__(self, port: int, folder: Path, *, interface: str = "lo") -> None:
        self.port = port
        self.path = folder / f"witness-{port}.pcap"
        self._stderr = folder / f"witness-{port}.err"
        self.interface = interface
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Witness:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 20.0) -> None:
        tcpdump = need_tool("tcpdump", "tcpdump")
        with open(self._stderr, "wb") as err:
            self._process = subprocess.Popen(
                [
                    tcpdump,
                    "-i",
                    self.interface,
                    "-U",
                    "--immediate-mode",
                    "-n",
                    "-w",
                    str(self.path),
                    f"tcp port {self.port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        while b"listening on" not in self._stderr.read_bytes():
            if self._process.poll() is not None:
                raise AssertionError(
                    "tcpdump stopped: " + self._stderr.read_text(errors="replace")
                )
            assert time.monotonic() < deadline, "tcpdump never said it was listening"
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGINT)  # tcpdump flushes its file and ends
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def packets(self) -> list[Tracked]:
        """The file, read by sockchat's pcap reader and packet parser."""
        flows = Flows(server_ports=(self.port,))
        found = []
        for record in read_pcap(self.path.read_bytes()).records:
            parsed = parse_frame(record.data, original_length=record.original_length)
            assert isinstance(parsed, Segment), f"{parsed}"
            found.append(flows.track(parsed, record.time))
        return found

    def dumped(self) -> list[Dumped]:
        """The file, as ``tcpdump -r -nn -tt`` prints it."""
        return read_with_tcpdump(self.path)

    def wait_for(
        self, done: Callable[[list[Tracked]], bool], timeout: float = 10.0
    ) -> list[Tracked]:
        """Poll the file until *done* holds for its packets; return them."""
        deadline = time.monotonic() + timeout
        while True:
            packets = self.packets() if self.path.exists() else []
            if done(packets):
                return packets
            assert time.monotonic() < deadline, "tcpdump saw:\n" + "\n".join(
                d.line for d in self.dumped()
            )
            time.sleep(0.05)


def read_with_tcpdump(path: Path, *extra: str) -> list[Dumped]:
    tcpdump = need_tool("tcpdump", "tcpdump")
    out = subprocess.run(
        [tcpdump, "-r", str(path), "-nn", "-tt", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return parse_dump(out)
