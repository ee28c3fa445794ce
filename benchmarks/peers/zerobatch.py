"""zerobatch itself, behind the same Peer contract as the servers it is compared with.

It runs from this checkout's own environment (nothing to install) with `zerobatch start
--foreground`, serving the workload's .mar unchanged, with the same batch size, delay, queue
and worker count as the peers. The body goes raw (application/octet-stream), as TorchServe
takes it. zerobatch alone also answers over ZeroMQ (`zmq_address`) and reports the batch sizes
it achieved (the broker's `describe`), which the report shows next to the figures.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from benchmarks.common import BENCHMARK_FLAGS, ROOT, free_port
from benchmarks.loadgen import HttpTarget
from benchmarks.peers import ModelSettings, Peer, Started, procs
from benchmarks.peers.startup import time_first_success
from zerobatch.config import control_address

if TYPE_CHECKING:
    from benchmarks.workloads import Workload

NAME = "zerobatch"
STARTUP_TIMEOUT_S = 60.0
#: the header that carries a request's deadline to zerobatch (see api/http_app.py)
TIMEOUT_HEADER = "x-zerobatch-timeout-ms"


@dataclass(frozen=True)
class ZerobatchStarted(Started):
    model: str = ""
    #: the broker's local control socket (describe)
    control_address: str = ""

    def batch_sizes(self) -> dict[int, int] | None:
        """Batches the broker dispatched so far, by size."""
        from zerobatch.api.client import Client

        with Client(self.control_address, timeout_ms=5000) as client:
            described = client.control("describe")
        for model in described["models"]:
            if model["modelName"] == self.model:
                return {int(size): count for size, count in model["batchSizes"].items()}
        return None


class ZerobatchPeer(Peer):
    name = NAME

    def __init__(self, frontends: int = 1, startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.frontends = frontends
        self.startup_timeout_s = startup_timeout_s

    def version(self) -> str | None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("zerobatch")
        except PackageNotFoundError:
            return None

    @contextmanager
    def serve(self, workload: Workload, settings: ModelSettings,
              env: dict[str, str]) -> Iterator[Started]:
        run_dir = tempfile.mkdtemp(prefix="zb-bench-")
        log_path = os.path.join(run_dir, "server.log")
        zmq_address = f"ipc://{run_dir}/client.sock"
        process = None
        try:
            port = free_port()
            target = HttpTarget(host="127.0.0.1", port=port,
                                path=f"/predictions/{workload.name}", body=workload.payload,
                                headers={"Content-Type": workload.content_type})
            argv = [sys.executable, "-m", "zerobatch.api.cli", "start", "--foreground",
                    "--run-dir", run_dir, "--http-port", str(port),
                    "--client-address", zmq_address, "--log-level", "WARNING",
                    "--frontends", str(self.frontends), "--workers", str(settings.workers),
                    "--batch-size", str(settings.batch_size),
                    "--max-batch-delay", str(settings.max_batch_delay_ms),
                    "--max-queue", str(settings.max_queue),
                    "--batch-policy", settings.policy or "adaptive",
                    *BENCHMARK_FLAGS, "--models", f"{workload.name}={workload.archive}"]
            started_at = time.monotonic()
            process = procs.spawn(argv, env={**os.environ, **env}, cwd=ROOT, log_path=log_path)
            startup_s = time_first_success(target, started_at, process,
                                           timeout_s=self.startup_timeout_s, log_path=log_path)
            yield ZerobatchStarted(
                name=NAME, target=target, startup_s=startup_s, zmq_address=zmq_address,
                model=workload.name, control_address=control_address(run_dir),
                notes="raw body (application/octet-stream) to /predictions/<model>, as "
                      "TorchServe takes it; the .mar unchanged")
        finally:
            if process is not None:
                procs.stop_session(process)
            shutil.rmtree(run_dir, ignore_errors=True)
