"""A real worker loop run in a thread of the test process, against tests.support.fake_worker_broker.

The worker tests (tests/integration/test_worker_loop.py) share this: `worker_config` builds
the WorkerConfig of a test model for a fake broker, and `ThreadWorker` runs `WorkerLoop.run`
until `stop()`, which fails the test if the loop does not return in time.
"""

from __future__ import annotations

import threading

from tests.models import model_path
from zerobatch.config import ModelConfig, WorkerConfig
from zerobatch.worker.loop import WorkerLoop


def worker_config(worker_broker, model="echo", path=None, interval_ms=1000, worker_id="w-test",
                  batch_size=8) -> WorkerConfig:
    return WorkerConfig(worker_id, worker_broker.address,
                        ModelConfig(model, path or model_path(model), batch_size=batch_size),
                        heartbeat_interval_ms=interval_ms)


class ThreadWorker:
    def __init__(self, config: WorkerConfig) -> None:
        self.loop = WorkerLoop(config)
        self.stop_event = threading.Event()
        self.reason = None
        self.thread = threading.Thread(target=self._run, name="worker-under-test", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.reason = self.loop.run(self.stop_event)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the worker loop did not stop"
