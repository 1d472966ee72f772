"""The broker's benchmark set-ups: several processes on the server's side.

``run.py`` measures one server process; these rigs start several, with the
same pieces as ``examples/cluster/run.py`` (imported from there, so that the
benchmark runs the deployment the example shows):

- ``workers``: redis-server, one instance ``--responder workers``, and one
  ``python -m sockchat.worker`` running ``sockchat:EchoResponder``; the load
  generator connects to the instance.
- ``broker-pair``: redis-server and two instances ``--responder pair``; the
  load generator sends every other connection to the second instance
  (``loadgen --port2``), and the broker pairs them in arrival order.
- ``haproxy``: haproxy (send-proxy) in front of one ``--responder echo``
  instance: what the load balancer costs.
- ``cluster``: haproxy in front of two ``--responder echo`` instances.

The server's CPU for a run is the sum over every process of the rig (read
from ``/proc`` as for one server); ``parts`` tells it per process, so that
the report can say where it went and what share the load generator took.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "cluster" / "run.py"

#: rig kind -> the tools it needs on PATH.
NEEDS = {
    "workers": ("redis-server",),
    "broker-pair": ("redis-server",),
    "haproxy": ("haproxy",),
    "cluster": ("haproxy",),
}
ENDED = re.compile(rb"conversation \d+ with .* ended after")


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sockchat_cluster_run", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def missing_tools(kind: str) -> list[str]:
    return [tool for tool in NEEDS[kind] if shutil.which(tool) is None]


class Rig:
    """The processes of one broker set-up, started in *tmp*.

    Offers what ``run.py`` reads of a server: ``port`` (and ``port2``),
    ``cpu()``, ``parts()``, ``rss()``, ``log_lines()``, ``log_bytes()``,
    ``stop()``.
    """

    def __init__(
        self,
        kind: str,
        options: Sequence[str],
        caps: Sequence[str],
        tmp: Path,
        cpu_of: Callable[[int], float],
        rss_of: Callable[[int], int],
    ) -> None:
        self.cpu_of, self.rss_of = cpu_of, rss_of
        cluster_run = _example()
        self.cluster = cluster_run.Cluster(Path(tmp))
        self.port2: int | None = None
        self.instances: list[Any] = []
        where = Path(tmp)
        try:
            if kind in ("workers", "broker-pair"):
                redis = self.cluster.add(
                    cluster_run.Redis(where, cluster_run.free_port())
                )
                broker = ["--broker", redis.url]
            else:
                broker = []
            count = 2 if kind in ("broker-pair", "cluster") else 1
            listen = (
                "haproxy:tcp:0:interface=127.0.0.1"
                if kind in ("haproxy", "cluster")
                else "tcp:0:interface=127.0.0.1"
            )
            for name in ("one", "two")[:count]:
                self.instances.append(
                    self.cluster.add(
                        cluster_run.Instance(
                            name, where, [*options, *broker, *caps], listen=listen
                        )
                    )
                )
            if kind == "workers":
                self.cluster.add(
                    cluster_run.Worker(
                        "worker 1", where, redis.url, "sockchat:EchoResponder"
                    )
                )
                redis.wait_for_workers(1)  # and the instance knows it
            if kind in ("haproxy", "cluster"):
                proxy = self.cluster.add(
                    cluster_run.HAProxy(
                        where,
                        cluster_run.free_port(),
                        [i.port for i in self.instances],
                    )
                )
                self.port = proxy.port
            else:
                self.port = self.instances[0].port
                if count == 2:
                    self.port2 = self.instances[1].port
        except BaseException:
            self.cluster.stop()
            raise

    @property
    def pid(self) -> int:
        return int(self.instances[0].pid)

    def parts(self) -> dict[str, float]:
        """CPU seconds so far, per process of the rig."""
        return {p.name: self.cpu_of(p.pid) for p in self.cluster.processes}

    def cpu(self) -> float:
        return sum(self.parts().values())

    def rss(self) -> int:
        return sum(self.rss_of(p.pid) for p in self.cluster.processes)

    def log_bytes(self) -> bytes:
        return b"".join(i.log.read_bytes() for i in self.instances)

    def log_lines(self) -> int:
        return self.log_bytes().count(b"\n")

    def ended(self) -> int:
        return len(ENDED.findall(self.log_bytes()))

    def stop(self) -> None:
        self.cluster.stop()
