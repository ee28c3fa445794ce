"""Driving a BrokerCore by hand in unit tests: a model, requests, workers, their replies, and
what the core answered (tests/unit/test_broker_core.py, test_scaling.py and others)."""

from __future__ import annotations

import pytest

from zerobatch import protocol as p
from zerobatch.broker import aggregator
from zerobatch.broker.core import BrokerCore
from zerobatch.config import ModelConfig

MS = 1_000_000
CLIENT = b"client-1"
WORKER = b"echo@1.0#0.1"
BAD_ROUTE = p.packb(["m", None, -5])


def add(core: BrokerCore, **overrides) -> None:
    settings = dict(name="echo", path="/nowhere", batch_size=4, max_batch_delay_ms=50,
                    max_queue=8, batch_policy="full_delay")
    settings.update(overrides)
    core.add_model(ModelConfig(**settings))


def request(core: BrokerCore, rid: bytes, now_ns: int, *, model="echo", timeout_ms=0,
            body=b"x") -> None:
    frames = [CLIENT] + p.encode_request(rid, p.encode_route(model, None, timeout_ms),
                                         p.encode_meta("text/plain"), body)
    core.on_front(frames, now_ns)


def ready(core: BrokerCore, now_ns: int, identity: bytes = WORKER, model="echo") -> None:
    core.on_back([identity] + p.encode_ready(model, "1.0", identity.decode(), None, 123), now_ns)


def take_front(core: BrokerCore) -> list[list]:
    out, core.out_front = core.out_front, []
    return out


def take_control(core: BrokerCore) -> list[list]:
    out, core.out_control = core.out_control, []
    return out


def take_back(core: BrokerCore) -> list[list]:
    out, core.out_back = core.out_back, []
    return out


def flat(messages: list[list]) -> list[tuple]:
    """Each answer in the client messages: (identity, command, rid, a, body)."""
    return [(m[0], command, rid, a, body) for m in messages
            for command, rid, a, body in p.parse_client_replies(m[1:])]


def rids(messages: list[list]) -> list[bytes]:
    return [rid for _identity, _command, rid, _a, _body in flat(messages)]


def errors(messages: list[list]) -> list[tuple[bytes, str]]:
    return [(rid, p.parse_error_info(a)[0]) for _i, command, rid, a, _b in flat(messages)
            if command == p.ERROR]


def reply_batch(core: BrokerCore, batch_msg: list, now_ns: int, identity: bytes = WORKER):
    """Answer a BATCH or BATCHES message as an echo worker does: each body back, in order."""
    batch_id, pairs, _sizes = p.parse_batch(batch_msg[1:])
    items = []
    for _meta, body in pairs:
        items += [p.REPLY + p.encode_reply_meta(200, "text/plain"), body]
    core.on_back([identity, p.VERSION, p.W_REPLY, p.encode_batch_id(batch_id)] + items, now_ns)


def make_core(twin: str) -> BrokerCore:
    """A core on the named aggregator twin; skips the test when that twin is not built."""
    try:
        cls = aggregator.load(twin)
    except Exception as exc:  # the compiled twin may be absent in a bare checkout
        pytest.skip(f"{twin} aggregator unavailable: {exc}")
    return BrokerCore(cls, max_request_bytes=1000)
