"""Run a program with cProfile switched on and off by signals.

    python benchmarks/_profiled.py OUT twistd ARGS...
    python benchmarks/_profiled.py OUT -m MODULE ARGS...

``SIGUSR1`` starts counting, ``SIGUSR2`` stops and writes the stats to
OUT (``pstats``), so that ``broker_probe.py`` counts the calls of the
measured turns alone, not those of the start.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    out, target, *rest = sys.argv[1:]
    profile = cProfile.Profile()

    def on(signum: int, frame: FrameType | None) -> None:
        profile.enable()

    def off(signum: int, frame: FrameType | None) -> None:
        profile.disable()
        profile.dump_stats(out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    if target == "twistd":
        from twisted.scripts.twistd import run

        sys.argv = ["twistd", *rest]
        run()
    elif target == "-m":
        module, *args = rest
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        raise SystemExit("usage: _profiled.py OUT (twistd | -m MODULE) ARGS...")


if __name__ == "__main__":
    main()
