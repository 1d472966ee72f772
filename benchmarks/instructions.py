#!/usr/bin/env python3
"""Instructions per turn, counted by valgrind: a measure that a busy machine
does not blur.

    python3 benchmarks/instructions.py                 # baseline and sockchat, C=1
    python3 benchmarks/instructions.py --conns 100 --turns 10,30
    python3 benchmarks/instructions.py --servers echo --keep out/   # keep callgrind.out

Each server runs under ``valgrind --tool=callgrind`` twice, with the same
load generator (``loadgen.c``) and the same connections, for T1 and then T2
turns per connection; everything but the extra turns (start-up, connects,
warm-up, shutdown) is the same in both runs, so

    instructions per turn = (I(T2) - I(T1)) / ((T2 - T1) * C)

``PYTHONHASHSEED=0`` keeps the two runs' start-ups alike.  Callgrind counts
user-space instructions only: the kernel's share of a turn (the system
calls) is not in these figures; count system calls with ``strace -c -f``.
With ``--keep``, the T2 run's ``callgrind.out`` is kept for
``callgrind_annotate``.  Needs valgrind and a C compiler; Linux only.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import build_loadgen, ensure_venv  # noqa: E402

SERVERS = ("baseline", "echo")


def command(server: str, python: str, tmp: Path) -> tuple[list[str], re.Pattern[str]]:
    """The server's command line, and how its log says which port it took."""
    if server == "baseline":
        return [python, str(HERE / "baseline.py"), "0"], re.compile(
            r"listening on (\d+)"
        )
    twistd = str(Path(python).parent / "twistd")
    return [
        twistd,
        "-n",
        "--pidfile=",
        "sockchat",
        "--port",
        "tcp:0:interface=127.0.0.1",
        "--responder",
        "echo",
        "--max-clients",
        "2000",
        "--max-per-ip",
        "2000",
    ], re.compile(r"sockchat listening on 127\.0\.0\.1:(\d+)")


def count(server: str, conns: int, turns: int, keep: Path | None) -> int:
    """Instructions that *server* ran, start to stop, serving *turns* each."""
    loadgen = build_loadgen()
    with tempfile.TemporaryDirectory(prefix="instr-") as tmpdir:
        tmp = Path(tmpdir)
        out = tmp / "callgrind.out"
        argv, pattern = command(server, sys.executable, tmp)
        log_path = tmp / "server.log"
        env = dict(os.environ, PYTHONHASHSEED="0")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={out}",
                    *argv,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp,
                env=env,
            )
            try:
                deadline = time.monotonic() + 300
                while True:
                    match = pattern.search(log_path.read_text(errors="replace"))
                    if match:
                        break
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{server} did not start under valgrind: "
                            + log_path.read_text(errors="replace")[-2000:]
                        )
                    time.sleep(0.2)
                subprocess.run(
                    [
                        str(loadgen),
                        *("--port", match.group(1)),
                        *("--conns", str(conns), "--turns", str(turns)),
                        *("--deadline", "600"),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=700,
                )
                if server != "baseline":  # let it log each conversation's end
                    time.sleep(1.0)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=300)
        summary = re.search(r"^summary:\s*(\d+)", out.read_text(), re.MULTILINE)
        if summary is None:
            raise RuntimeError(f"no summary line in {out}")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, keep / f"callgrind.out.{server}.{conns}x{turns}")
        return int(summary.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument(
        "--turns", default="500,2500", help="T1,T2: turns per connection"
    )
    parser.add_argument("--keep", type=Path, help="keep the T2 callgrind.out here")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions: needs valgrind (apt-get install valgrind)")
    t1, t2 = (int(t) for t in args.turns.split(","))
    print("| server | C | turns | instructions per turn |")
    print("|---|---:|---|---:|")
    for server in args.servers.split(","):
        if server not in SERVERS:
            raise SystemExit(f"instructions: --servers: choose from {SERVERS}")
        low = count(server, args.conns, t1, None)
        high = count(server, args.conns, t2, args.keep)
        per = (high - low) / ((t2 - t1) * args.conns)
        print(f"| {server} | {args.conns} | {t1} → {t2} | {per:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    ensure_venv()
    sys.exit(main())
