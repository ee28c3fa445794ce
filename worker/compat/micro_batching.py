"""`ts.handler_utils.micro_batching`: TorchServe's `MicroBatching`, a batch cut into micro
batches that flow through preprocess -> inference -> postprocess on threads.

A handler opts in by replacing its `handle` with one (pytorch/serve's
`examples/micro_batching`):

    class MyHandler(ImageClassifier):
        def __init__(self):
            self.handle = MicroBatching(self)

Each step has its own pool of threads (`parallelism`, one each by default) fed by a queue, so
micro batch k+1 is preprocessed while micro batch k runs inference; `handle(data)` cuts the
batch into slices of `micro_batch_size` requests, waits for every slice and returns the
results in request order. The handler reads the numbers from its `model-config.yaml`
(`micro_batching: {micro_batch_size: 4, parallelism: {preprocess: 2, inference: 1,
postprocess: 2}}`) and sets them in `initialize`, as the example does.

Same API as TorchServe's (constructor, `micro_batch_size`, `parallelism` property and setter,
`thread_groups`, `get_micro_batch_idx()`, `handle(data)`, `__call__(data, context)`,
`shutdown()`), with these differences: an exception in a step (a bad input, a model error)
is raised from `handle` once every micro batch is through, where TorchServe's thread dies and
the worker waits forever; one `handle` runs at a time per object; a step needs at least one
thread (TorchServe accepts 0 and then never answers); the threads are daemons, so a worker
never waits for them to exit. Needs neither torch nor anything beyond the standard library.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from zerobatch.errors import ConfigError

log = logging.getLogger(__name__)

#: The handler's steps, in the order a micro batch passes them.
HANDLER_METHODS = ["preprocess", "inference", "postprocess"]

#: How often an idle step thread looks whether it was asked to stop (stopping threads are
#: also woken at once by a marker on their queue; this bounds the wait when another thread
#: of the same step took the marker).
STOP_POLL_S = 0.5

#: A queue entry that wakes one idle thread so it sees its stop event.
_WAKE = object()


@dataclass
class WorkerThread:
    """One thread of a step and the event that stops it."""

    event: threading.Event
    thread: threading.Thread


@dataclass
class _MicroBatch:
    """A slice of the batch on its way through the steps; `error` stops it where it failed."""

    index: int
    payload: Any
    error: BaseException | None = None


def _run_step(in_queue: queue.Queue, out_queue: queue.Queue, step: Any,
              thread_local_data: threading.local, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            item = in_queue.get(timeout=STOP_POLL_S)
        except queue.Empty:
            continue
        if item is _WAKE:
            continue
        if item.error is None:
            thread_local_data.micro_batch_idx = item.index
            try:
                item.payload = step(item.payload)
            except BaseException as exc:  # kept on the item; handle() raises it at the end
                item.payload, item.error = None, exc
            finally:
                thread_local_data.micro_batch_idx = None
        out_queue.put(item)


class MicroBatching:
    """Stands in for a handler's `handle`: runs its three steps on micro batches in threads."""

    def __init__(self, parent_handler: Any, micro_batch_size: int = 1,
                 parallelism: dict[str, int] | None = None) -> None:
        self.handler = parent_handler
        self.micro_batch_size = micro_batch_size
        self._parallelism: dict[str, int] = {}
        self.thread_groups: dict[str, list[WorkerThread]] = {step: [] for step in
                                                             HANDLER_METHODS}
        self.thread_local_data = threading.local()
        self._lock = threading.Lock()
        self._closed = False
        # handle() puts micro batches on "preprocess_in"; a step's "_out" queue is the same
        # queue as the next step's "_in"
        self.queues: dict[str, queue.Queue] = {"preprocess_in": queue.Queue()}
        for step, next_step in zip(HANDLER_METHODS, HANDLER_METHODS[1:], strict=False):
            self.queues[f"{step}_out"] = self.queues[f"{next_step}_in"] = queue.Queue()
        self.queues[f"{HANDLER_METHODS[-1]}_out"] = queue.Queue()
        self.parallelism = parallelism or {}

    # ---- configuration
    @property
    def parallelism(self) -> dict[str, int]:
        """Threads per step, as last set (a copy; steps not set run one thread)."""
        return dict(self._parallelism)

    @parallelism.setter
    def parallelism(self, parallelism: dict[str, int]) -> None:
        """Set the thread count of some steps; threads start or stop at once."""
        unknown = sorted(set(parallelism) - set(HANDLER_METHODS))
        if unknown:
            raise ConfigError(f"micro_batching parallelism: unknown step(s) {unknown}; the "
                              f"steps are {HANDLER_METHODS}")
        for step, count in parallelism.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"micro_batching parallelism: {step} must be a whole number "
                                  f"of threads >= 1, got {count!r}")
        with self._lock:
            self._parallelism.update(parallelism)
            if not self._closed:
                self._update_threads()

    def _update_threads(self) -> None:
        for step in HANDLER_METHODS:
            group = self.thread_groups[step]
            wanted = self._parallelism.get(step, 1)
            while len(group) < wanted:
                stop = threading.Event()
                thread = threading.Thread(
                    target=_run_step, name=f"micro-batching-{step}-{len(group)}", daemon=True,
                    args=(self.queues[f"{step}_in"], self.queues[f"{step}_out"],
                          getattr(self.handler, step), self.thread_local_data, stop))
                thread.start()
                group.append(WorkerThread(stop, thread))
            if len(group) > wanted:
                self._stop([group.pop() for _ in range(len(group) - wanted)], step)

    def _stop(self, workers: list[WorkerThread], step: str) -> None:
        for worker in workers:
            worker.event.set()
            self.queues[f"{step}_in"].put(_WAKE)
        for worker in workers:
            worker.thread.join()

    # ---- running
    def get_micro_batch_idx(self) -> int | None:
        """Inside a step: the index of the micro batch this thread is working on."""
        return getattr(self.thread_local_data, "micro_batch_idx", None)

    def handle(self, data: list) -> list:
        """Run the batch as micro batches; the results of all of them, in request order."""
        size = self.micro_batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"micro_batch_size must be a whole number >= 1, got {size!r}")
        with self._lock:
            if self._closed:
                raise RuntimeError("this MicroBatching was shut down")
            count = 0
            for count, start in enumerate(range(0, len(data), size), start=1):
                self.queues["preprocess_in"].put(_MicroBatch(count - 1, data[start:start + size]))
            done = [self.queues["postprocess_out"].get() for _ in range(count)]
        done.sort(key=lambda item: item.index)
        for item in done:
            if item.error is not None:
                raise item.error
        return [result for item in done for result in item.payload]

    def __call__(self, data: list, context: Any) -> list:
        """The handler's entry point: `handle(data, context)` with micro batching."""
        start_s = time.perf_counter()
        handler = self.handler
        handler.context = context
        if os.environ.get("ENABLE_TORCH_PROFILER") and hasattr(handler, "_infer_with_profiler"):
            output, _ = handler._infer_with_profiler(data=data)
        elif _asks(handler, "_is_describe"):
            output = [handler.describe_handle()]
        elif _asks(handler, "_is_explain"):
            output = handler.explain_handle(handler.preprocess(data), data)
        else:
            output = self.handle(data)
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time("HandlerTime", round((time.perf_counter() - start_s) * 1000, 2),
                             None, "ms")
        return output

    # ---- stopping
    def shutdown(self) -> None:
        """Stop every thread, waiting for each to finish the micro batch it runs."""
        with self._lock:
            self._closed = True
            for step in HANDLER_METHODS:
                group = self.thread_groups[step]
                self._stop(group[:], step)
                group.clear()

    def __del__(self) -> None:
        # Only ask the threads to stop: joining here could block the garbage collector (or
        # interpreter exit, where daemon threads no longer run).
        if sys is None or sys.is_finalizing():
            return
        for group in getattr(self, "thread_groups", {}).values():
            for worker in group:
                worker.event.set()


def _asks(handler: Any, predicate: str) -> bool:
    """The handler's `_is_describe()` / `_is_explain()`, False where it has none."""
    check = getattr(handler, predicate, None)
    return bool(check()) if callable(check) else False
