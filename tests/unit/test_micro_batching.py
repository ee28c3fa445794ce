"""`ts.handler_utils.micro_batching.MicroBatching`: order, micro batch indices, threads per
step, errors, shutdown; and a handler file using it, loaded by the worker's Service."""

import json
import math
import os
import textwrap
import threading
import warnings

import pytest

from tests.support.fake_worker_broker import decode_answers, item
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError
from zerobatch.worker.compat.micro_batching import MicroBatching
from zerobatch.worker.service import Service


class StepsRecorder:
    """A handler whose steps tag each value, remembering which micro batch each step saw."""

    def __init__(self, fail_on=None):
        self.fail_on = fail_on
        self.seen = {"preprocess": set(), "inference": set(), "postprocess": set()}
        self.context = None
        self.handle = None

    def _note(self, step):
        self.seen[step].add(self.handle.get_micro_batch_idx())

    def preprocess(self, data):
        self._note("preprocess")
        if self.fail_on in data:
            raise ValueError(f"cannot take {self.fail_on}")
        return [value * 10 for value in data]

    def inference(self, data):
        self._note("inference")
        return [value + 1 for value in data]

    def postprocess(self, data):
        self._note("postprocess")
        return [{"result": value} for value in data]


@pytest.fixture
def make():
    made = []

    def make_batching(handler=None, **kwargs):
        handler = handler or StepsRecorder()
        handler.handle = MicroBatching(handler, **kwargs)
        made.append(handler.handle)
        return handler

    yield make_batching
    for batching in made:
        batching.shutdown()


@pytest.mark.parametrize("size", [1, 2, 3, 8])
@pytest.mark.parametrize("count", [0, 1, 5, 8])
def test_results_come_back_in_request_order(make, size, count):
    handler = make(micro_batch_size=size, parallelism={"preprocess": 3, "postprocess": 2})
    assert handler.handle.handle(list(range(count))) == [
        {"result": value * 10 + 1} for value in range(count)]
    batches = set(range(math.ceil(count / size)))
    assert handler.seen == {"preprocess": batches, "inference": batches,
                            "postprocess": batches}
    assert handler.handle.get_micro_batch_idx() is None  # outside a step


def test_threads_per_step_follow_parallelism(make):
    batching = make().handle
    assert {step: len(group) for step, group in batching.thread_groups.items()} == {
        "preprocess": 1, "inference": 1, "postprocess": 1}
    batching.parallelism = {"preprocess": 3, "postprocess": 2}
    assert batching.parallelism == {"preprocess": 3, "postprocess": 2}
    assert [len(batching.thread_groups[s]) for s in ("preprocess", "inference",
                                                     "postprocess")] == [3, 1, 2]
    stopped = [worker.thread for worker in batching.thread_groups["preprocess"][1:]]
    batching.parallelism = {"preprocess": 1}
    assert len(batching.thread_groups["preprocess"]) == 1
    assert not any(thread.is_alive() for thread in stopped)
    assert batching.handle([1, 2, 3]) == [{"result": 11}, {"result": 21}, {"result": 31}]
    returned = batching.parallelism
    returned["inference"] = 9  # a copy, as in TorchServe
    assert len(batching.thread_groups["inference"]) == 1


@pytest.mark.parametrize("parallelism, message", [
    ({"predict": 2}, "unknown step"), ({"inference": 0}, ">= 1"),
    ({"inference": "2"}, ">= 1"), ({"inference": True}, ">= 1")])
def test_bad_parallelism_is_refused(make, parallelism, message):
    batching = make().handle
    with pytest.raises(ConfigError, match=message):
        batching.parallelism = parallelism


@pytest.mark.parametrize("size", [0, -1, 1.5, None])
def test_bad_micro_batch_size_is_refused(make, size):
    batching = make().handle
    batching.micro_batch_size = size
    with pytest.raises(ConfigError, match="micro_batch_size"):
        batching.handle([1])


def test_a_failing_step_raises_once_the_batch_is_through(make):
    handler = make(StepsRecorder(fail_on=4), micro_batch_size=2)
    with pytest.raises(ValueError, match="cannot take 4"):
        handler.handle.handle(list(range(7)))
    # micro batch 2 stopped at preprocess; the others ran to the end
    assert handler.seen["postprocess"] == {0, 1, 3}
    assert all(w.thread.is_alive() for group in handler.handle.thread_groups.values()
               for w in group)
    assert handler.handle.handle([0, 1]) == [{"result": 1}, {"result": 11}]


def test_shutdown_stops_every_thread(make):
    batching = make(parallelism={"inference": 2}).handle
    threads = [w.thread for group in batching.thread_groups.values() for w in group]
    assert len(threads) == 4
    batching.shutdown()
    assert not any(thread.is_alive() for thread in threads)
    batching.shutdown()  # again: nothing left to stop
    with pytest.raises(RuntimeError, match="shut down"):
        batching.handle([1])


def test_threads_are_daemons(make):
    batching = make().handle
    assert all(w.thread.daemon for group in batching.thread_groups.values() for w in group)


def test_one_handle_at_a_time(make):
    handler = make(micro_batch_size=1, parallelism={"preprocess": 2, "postprocess": 2})
    results = {}

    def call(offset):
        results[offset] = handler.handle.handle([offset + value for value in range(5)])

    callers = [threading.Thread(target=call, args=(offset,)) for offset in (0, 100, 200)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert results == {offset: [{"result": (offset + v) * 10 + 1} for v in range(5)]
                       for offset in (0, 100, 200)}


class Metrics:
    def __init__(self):
        self.times = []

    def add_time(self, name, value, idx=None, unit="ms"):
        self.times.append((name, unit))


class Context:
    def __init__(self):
        self.metrics = Metrics()


def test_call_is_a_handle_entry_point(make):
    handler = make(micro_batch_size=2)
    context = Context()
    assert handler.handle([1, 2, 3], context) == [{"result": 11}, {"result": 21},
                                                   {"result": 31}]
    assert handler.context is context
    assert context.metrics.times == [("HandlerTime", "ms")]


def test_call_answers_describe_and_explain_where_the_handler_has_them(make):
    class Describing(StepsRecorder):
        def _is_describe(self):
            return True

        def describe_handle(self):
            return "described"

    class Explaining(StepsRecorder):
        def _is_explain(self):
            return True

        def explain_handle(self, preprocessed, raw):
            return [{"explained": value} for value in preprocessed]

    assert make(Describing()).handle([1], Context()) == ["described"]
    assert make(Explaining()).handle([1, 2], Context()) == [{"explained": 10},
                                                            {"explained": 20}]


# ------------------------------------------------------------------ in a worker

HANDLER = """
    import torch
    from ts.handler_utils.micro_batching import MicroBatching
    from ts.torch_handler.base_handler import BaseHandler


    class MicroBatched(BaseHandler):
        def __init__(self):
            super().__init__()
            self.handle = MicroBatching(self)

        def initialize(self, ctx):
            super().initialize(ctx)
            settings = ctx.model_yaml_config.get("micro_batching", {})
            if settings.get("parallelism"):
                self.handle.parallelism = settings["parallelism"]
            self.handle.micro_batch_size = settings.get("micro_batch_size", 1)

        def preprocess(self, data):
            return torch.tensor([row["body"]["x"] for row in data], dtype=torch.float32)

        def postprocess(self, output):
            index = self.handle.get_micro_batch_idx()
            return [{"doubled": value, "micro_batch": index} for value in output.tolist()]
"""

MODEL_CONFIG = """
    micro_batching:
      micro_batch_size: 3
      parallelism:
        preprocess: 2
        inference: 1
        postprocess: 3
"""


def test_a_handler_file_micro_batches_in_a_worker(tmp_path):
    torch = pytest.importorskip("torch")

    class Doubler(torch.nn.Module):
        def forward(self, x):
            return x * 2

    os.makedirs(tmp_path / "MAR-INF")
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({
        "runtime": "python", "model": {"modelName": "m", "handler": "handler.py",
                                       "serializedFile": "doubler.pt"}}))
    (tmp_path / "handler.py").write_text(textwrap.dedent(HANDLER))
    (tmp_path / "model-config.yaml").write_text(textwrap.dedent(MODEL_CONFIG))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Doubler()).save(str(tmp_path / "doubler.pt"))
    service = Service.load(ModelConfig("m", str(tmp_path), batch_size=8))
    batching = service.entry_point
    try:
        assert isinstance(batching, MicroBatching)
        assert batching.micro_batch_size == 3
        assert {step: len(group) for step, group in batching.thread_groups.items()} == {
            "preprocess": 2, "inference": 1, "postprocess": 3}
        items = [item(json.dumps({"x": value})) for value in range(7)]
        replies = decode_answers(service.run_batch(1, items)[3:])
        assert [r.status for r in replies] == [200] * 7
        assert [json.loads(r.body) for r in replies] == [
            {"doubled": value * 2.0, "micro_batch": value // 3} for value in range(7)]
    finally:
        batching.shutdown()
