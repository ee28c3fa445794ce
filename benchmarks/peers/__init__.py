"""The servers zerobatch is measured against, behind one small contract.

A `Peer` knows how to install its server (idempotently, into its own virtual environment
under `<repo>/.bench/venvs/<name>`, so a peer's dependencies never touch ours), and how to
serve a `Workload` with given `ModelSettings` on loopback free ports. `serve()` is a context
manager: it yields a `Started` (where to POST, in which form, and how long the server took
from spawn to its first successful prediction) and stops everything it started on exit,
failure included.

Peers are looked up by name through `PEERS` / `get_peer()`; the table holds import paths so
that asking for one peer never imports another's module.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from benchmarks.loadgen import HttpTarget

if TYPE_CHECKING:
    from benchmarks.workloads import Workload


@dataclass(frozen=True)
class ModelSettings:
    """The serving settings every server is given, so that all run the same configuration."""

    batch_size: int = 1
    max_batch_delay_ms: int = 0
    workers: int = 1
    max_queue: int = 1000
    policy: str | None = None  # zerobatch only ("adaptive" | "full_delay")


@dataclass(frozen=True)
class Started:
    """A running server, as the load generators need to see it."""

    name: str
    target: HttpTarget  # what to POST, body already in the form this server takes
    startup_s: float  # spawn -> first 2xx on the real payload
    zmq_address: str | None = None  # zerobatch only
    notes: str = ""  # how the request is sent, for the report

    def batch_sizes(self) -> dict[int, int] | None:
        """Achieved batch sizes; only zerobatch can tell (its subclass overrides this)."""
        return None


class Peer:
    """One server kind. Subclasses set `name` and implement the four methods."""

    name: str = ""

    def missing(self) -> str | None:
        """Why this peer cannot run on this machine, or None when it can (perhaps after
        install())."""
        return None

    def install(self) -> None:
        """Make the peer runnable; cheap when it already is."""

    def version(self) -> str | None:
        """The installed server's version, for the run's record."""
        return None

    @contextmanager
    def serve(self, workload: Workload, settings: ModelSettings,
              env: dict[str, str]) -> Iterator[Started]:
        raise NotImplementedError
        yield  # pragma: no cover


PEERS: dict[str, str] = {
    "zerobatch": "benchmarks.peers.zerobatch:ZerobatchPeer",
    "torchserve": "benchmarks.peers.torchserve:TorchServePeer",
    "litserve": "benchmarks.peers.litserve:LitServePeer",
}


def get_peer(name: str, **options) -> Peer:
    """An instance of the peer registered under name (options go to its constructor)."""
    try:
        module_name, class_name = PEERS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(sorted(PEERS))}") from None
    return getattr(importlib.import_module(module_name), class_name)(**options)
