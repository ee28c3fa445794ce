"""BrokerCore with sequence batching (broker/sequences.py): the headers added and answered,
pinning through the core, refusals, lost workers; and the other models' path untouched.
TorchServe 0.12's rules by default; zerobatch's stricter ones with `zerobatch_answers`
(`strict_core`)."""

from __future__ import annotations

import pytest

from tests.support.broker_core import (
    CLIENT,
    MS,
    add,
    errors,
    flat,
    ready,
    reply_batch,
    take_back,
    take_front,
)
from zerobatch import protocol as p
from zerobatch.broker.core import BrokerCore

W1 = b"stateful@1.0#0.1"
W2 = b"stateful@1.0#1.1"


@pytest.fixture
def strict_core(core):
    """`core` with zerobatch's own answers on, as --zerobatch-answers starts it (models added
    from now on get the strict rules)."""
    core.zerobatch_answers = True
    return core


def add_stateful(core, **overrides) -> None:
    settings = dict(name="stateful", batch_size=4, max_queue=8, batch_policy="adaptive",
                    sequence_batching=True, sequence_max_idle_ms=100, max_sequence_queue=2,
                    max_sequences=1, workers=2)
    settings.update(overrides)
    add(core, **settings)


def send(core, rid: bytes, now_ns: int, headers: dict | None = None, body: bytes = b"1",
         model: str = "stateful") -> None:
    frames = [CLIENT] + p.encode_request(rid, p.encode_route(model, None, 0),
                                         p.encode_meta("text/plain", headers, "req"), body)
    core.on_front(frames, now_ns)


def batch_headers(batch: list) -> list[dict]:
    _batch_id, pairs, _sizes = p.parse_batch(batch[1:])
    return [p.parse_meta(bytes(meta))[1] or {} for meta, _body in pairs]


def answers(messages: list[list]) -> dict[bytes, tuple]:
    """rid -> (command, reply headers or error code)."""
    out = {}
    for _identity, command, rid, a, _body in flat(messages):
        if command == p.REPLY:
            out[rid] = (command, p.parse_reply_meta(a)[2] or {})
        else:
            out[rid] = (command, p.parse_error_info(a)[0])
    return out


def test_a_new_sequence_gets_an_id_and_start_header_and_the_answer_is_the_handlers(core):
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    send(core, b"r1", 0)
    (batch,) = take_back(core)
    (headers,) = batch_headers(batch)
    sequence_id = headers["ts_request_sequence_id"]
    assert sequence_id.startswith("ts-seq-") and headers["ts_request_sequence_start"] == "true"
    reply_batch(core, batch, MS, W1)
    assert answers(take_front(core)) == {b"r1": (p.REPLY, {})}  # as TorchServe: no id


def test_strict_answers_carry_the_sequence_id(strict_core):
    core = strict_core
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    send(core, b"r1", 0)
    (batch,) = take_back(core)
    sequence_id = batch_headers(batch)[0]["ts_request_sequence_id"]
    reply_batch(core, batch, MS, W1)
    assert answers(take_front(core)) == {
        b"r1": (p.REPLY, {"ts_request_sequence_id": sequence_id})}


def test_the_constructor_keyword_makes_the_sequences_strict():
    from zerobatch.broker import aggregator

    for strict in (False, True):
        core = BrokerCore(aggregator.load("python"), zerobatch_answers=strict)
        add_stateful(core)
        assert core.models["stateful"]["1.0"].sequences.strict is strict


def test_a_named_sequence_runs_in_order_on_one_worker(core):
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    ready(core, 0, W2, model="stateful")
    named = {"ts_request_sequence_id": "seq_0"}
    send(core, b"r1", 0, named)
    send(core, b"r2", 0, named)
    (first,) = take_back(core)  # r2 waits for r1's answer, though W2 is free
    assert first[0] == W1 and batch_headers(first) == [named]
    reply_batch(core, first, MS, W1)
    assert answers(take_front(core))[b"r1"] == (p.REPLY, {})
    (second,) = take_back(core)
    assert second[0] == W1


def test_different_sequences_batch_together(core):
    add_stateful(core, workers=1)
    for i in range(3):
        send(core, b"r%d" % i, 0, {"ts_request_sequence_id": f"s{i}"})
    send(core, b"again", 0, {"ts_request_sequence_id": "s0"})
    ready(core, MS, W1, model="stateful")
    (batch,) = take_back(core)
    assert [h["ts_request_sequence_id"] for h in batch_headers(batch)] == ["s0", "s1", "s2"]


def test_a_full_sequence_queue_is_refused_with_503(core):
    add_stateful(core, max_sequence_queue=1)
    named = {"ts_request_sequence_id": "seq_0"}
    send(core, b"r1", 0, named)
    send(core, b"r2", 0, named)
    send(core, b"r3", 0, named)
    assert errors(take_front(core)) == [(b"r3", "queue_full")]
    assert core.describe()["models"][0]["queued"] == 2


def test_an_idle_sequence_expires_and_its_id_starts_a_new_one(core):
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    named = {"ts_request_sequence_id": "seq_0"}
    send(core, b"r1", 0, named)
    (batch,) = take_back(core)
    reply_batch(core, batch, MS, W1)
    take_front(core)
    core.on_tick(101 * MS)
    take_back(core)  # heartbeats
    assert core.models["stateful"]["1.0"].sequences.open_count == 0
    send(core, b"r2", 102 * MS, named)
    (batch,) = take_back(core)
    assert batch_headers(batch) == [named]  # no start header: TorchServe adds none either
    reply_batch(core, batch, 103 * MS, W1)
    assert answers(take_front(core)) == {b"r2": (p.REPLY, {})}


def test_an_idle_sequence_expires_and_is_refused_when_strict(strict_core):
    core = strict_core
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    named = {"ts_request_sequence_id": "seq_0"}
    send(core, b"r1", 0, named)
    (batch,) = take_back(core)
    reply_batch(core, batch, MS, W1)
    take_front(core)
    core.on_tick(MS)  # the first heartbeats; the next are due in 1 s
    assert core.next_wakeup_ns(MS) == 101 * MS
    core.on_tick(101 * MS)
    send(core, b"r2", 102 * MS, named)
    assert errors(take_front(core)) == [(b"r2", "queue_full")]


def test_a_lost_workers_sequences_go_on_on_the_next_worker(core):
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    named = {"ts_request_sequence_id": "seq_0"}
    send(core, b"r1", 0, named)
    send(core, b"r2", 0, named)
    take_back(core)
    core.worker_lost(W1.decode(), MS, "test")
    assert errors(take_front(core)) == [(b"r1", "worker_lost")]  # the one it ran
    send(core, b"r3", 2 * MS, named)
    assert take_front(core) == []
    ready(core, 3 * MS, W2, model="stateful")
    (batch,) = take_back(core)
    assert batch[0] == W2 and batch_headers(batch) == [named]
    reply_batch(core, batch, 4 * MS, W2)
    assert list(answers(take_front(core))) == [b"r2"]
    (batch,) = take_back(core)
    assert batch[0] == W2


def test_a_lost_worker_fails_its_sequences_waiting_and_later_requests_when_strict(strict_core):
    core = strict_core
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    named = {"ts_request_sequence_id": "seq_0"}
    send(core, b"r1", 0, named)
    send(core, b"r2", 0, named)
    take_back(core)
    core.worker_lost(W1.decode(), MS, "test")
    assert sorted(errors(take_front(core))) == [(b"r1", "worker_lost"), (b"r2", "worker_lost")]
    send(core, b"r3", 2 * MS, named)
    assert errors(take_front(core)) == [(b"r3", "worker_lost")]


def test_other_models_metas_are_never_decoded(core, monkeypatch):
    add(core)
    add_stateful(core)

    def no_decoding(_data):
        raise AssertionError("a non-sequence model's meta was decoded")

    monkeypatch.setattr(p, "parse_meta", no_decoding)
    ready(core, 0)
    meta = p.encode_meta("text/plain", {"ts_request_sequence_id": "x"}, "req")
    for i in range(4):
        frames = [CLIENT] + p.encode_request(b"e%d" % i, p.encode_route("echo", None, 0), meta,
                                             b"b")
        core.on_front(frames, 0)
    (batch,) = take_back(core)
    assert batch[4::2] == [meta] * 4
    reply_batch(core, batch, MS)
    replies = answers(take_front(core))
    assert replies[b"e0"] == (p.REPLY, {})


def test_the_end_header_is_the_handlers_business(core):
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    ending = {"ts_request_sequence_id": "seq_0", "ts_request_sequence_end": "true"}
    send(core, b"r1", 0, ending)
    (batch,) = take_back(core)
    assert batch_headers(batch) == [ending]  # the handler still reads it
    reply_batch(core, batch, MS, W1)
    take_front(core)
    send(core, b"r2", 2 * MS, {"ts_request_sequence_id": "seq_0"})
    (batch,) = take_back(core)
    assert batch[0] == W1
    assert core.models["stateful"]["1.0"].sequences.open_count == 1


@pytest.mark.parametrize("value", ["true", "True"])
def test_the_end_header_ends_the_sequence_after_its_answer_when_strict(strict_core, value):
    core = strict_core
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    send(core, b"r1", 0, {"ts_request_sequence_id": "seq_0", "ts_request_sequence_end": value})
    (batch,) = take_back(core)
    reply_batch(core, batch, MS, W1)
    take_front(core)
    send(core, b"r2", 2 * MS, {"ts_request_sequence_id": "seq_0"})
    assert errors(take_front(core)) == [(b"r2", "queue_full")]


def test_model_config_yaml_sequence_keys():
    from zerobatch.broker.model_yaml import apply_front_end_keys
    from zerobatch.config import ModelConfig

    base = ModelConfig(name="stateful", path="/nowhere")
    configured = apply_front_end_keys(base, {
        "sequenceBatching": True, "sequenceMaxIdleMSec": 60000, "sequenceTimeoutMSec": 5,
        "maxSequenceJobQueueSize": 0, "maxNumSequence": 4}, "model-config.yaml")
    assert (configured.sequence_batching, configured.sequence_max_idle_ms,
            configured.sequence_timeout_ms, configured.max_sequence_queue,
            configured.max_sequences) == (True, 60000, 5, 1, 4)


@pytest.mark.parametrize("config", [
    {"sequenceBatching": True},
    {"sequenceBatching": "yes", "sequenceMaxIdleMSec": 10},
    {"sequenceBatching": True, "sequenceMaxIdleMSec": -1},
])
def test_model_config_yaml_refuses_bad_sequence_settings(config):
    from zerobatch.broker.model_yaml import apply_front_end_keys
    from zerobatch.config import ModelConfig
    from zerobatch.errors import ConfigError

    with pytest.raises(ConfigError, match="sequence"):
        apply_front_end_keys(ModelConfig(name="m", path="/nowhere"), config, "model-config.yaml")


def test_the_bound_on_sequences_is_at_least_batch_size_times_max_workers(core):
    add_stateful(core, batch_size=2, workers=1, max_workers=3, max_sequences=1)
    assert core.models["stateful"]["1.0"].sequences.max_sequences == 6


def stream_one_chunk(core) -> tuple[int, list]:
    """seq_0's first request sent to W1, which streams one chunk: (batch id, the chunk as the
    client gets it)."""
    add_stateful(core)
    ready(core, 0, W1, model="stateful")
    send(core, b"r1", 0, {"ts_request_sequence_id": "seq_0"})
    (batch,) = take_back(core)
    batch_id = p.parse_batch(batch[1:])[0]
    core.on_back([W1] + p.encode_worker_partial(
        batch_id, 0, p.encode_reply_meta(200, "text/plain"), b"chunk"), MS)
    (chunk,) = flat(take_front(core))
    return batch_id, chunk


def test_a_streamed_chunk_is_the_handlers_by_default(core):
    _batch_id, chunk = stream_one_chunk(core)
    assert chunk[1] == p.PARTIAL and not p.parse_reply_meta(chunk[3])[2]


def test_a_streamed_chunk_carries_the_sequence_id_and_the_handlers_own_header_wins(
        strict_core):
    core = strict_core
    batch_id, chunk = stream_one_chunk(core)
    assert chunk[1] == p.PARTIAL and p.parse_reply_meta(chunk[3])[2] == {
        "ts_request_sequence_id": "seq_0"}
    own = p.encode_reply_meta(200, "text/plain", {"ts_request_sequence_id": "handler's"})
    core.on_back([W1, p.VERSION, p.W_REPLY, p.encode_batch_id(batch_id), p.REPLY + own, b"end"],
                 2 * MS)
    assert answers(take_front(core))[b"r1"] == (p.REPLY, {"ts_request_sequence_id": "handler's"})


def test_requests_waiting_in_sequences_count_as_queued_for_metrics_and_autoscaling():
    from zerobatch.broker import aggregator

    core = BrokerCore(aggregator.load("python"), scale_up_after_ns=10 * MS,
                      scale_down_after_ns=10**12)
    add_stateful(core, batch_size=1, workers=1, max_workers=2, max_sequences=8)
    for i in range(3):  # no worker yet: all three wait, in three sequences
        send(core, b"r%d" % i, 0, {"ts_request_sequence_id": f"s{i}"})
    assert core.metrics()["models"][0]["queued"] == 3
    assert core.describe()["models"][0]["queued"] == 3
    core.on_tick(0)
    core.on_tick(10 * MS)  # more waiting than a batch for scale_up_after: one worker more
    assert [(config.name, count) for config, count in core.scale_requests] == [("stateful", 2)]
