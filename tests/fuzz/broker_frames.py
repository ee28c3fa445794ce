"""Fuzz target: client and worker messages fed to the broker's sans-IO core.

An input is a sequence of records, each a message from a client (to `on_front`), a message
from a worker (to `on_back`) or a tick of the clock (`on_tick`); see `decode_ops`. So every
parser the broker runs on peer bytes is reached through the broker itself: the envelope
(`check_envelope`), request heads (`split_request_head`, `rid_head`), routes (`parse_route`),
controls (`parse_control`), READY, LOAD_FAILED, W_REPLY and W_PARTIAL.

What must hold, whatever came (`run_ops`, then `check_still_serves`):

- `on_front`, `on_back` and `on_tick` never raise: a malformed message is logged and dropped,
  or answered with an error;
- everything the broker sends parses: client messages as REPLIES (after coalescing, as the
  socket loop sends them), BATCH/BATCHES messages as `parse_batch` reads them;
- its books balance: each model's waiting payloads are its aggregator's queue, each in-flight
  batch belongs to a worker that runs it, and each worker's id is the identity it speaks
  from (a READY naming another worker id is refused: such a worker could never be lost);
- afterwards a well-formed request from a new client still gets exactly one answer: an error
  at once (queue full, model failed to load...), or, with a fresh worker ready, its echo,
  or an error when its deadline passes or the worker it went to is lost.

The aggregator is the pure-Python twin (its code is instrumented too); the hypothesis tests
(tests/unit/test_fuzz_parsers.py) run the same checks on both twins.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

import zmq

from tests.fuzz import _harness

with _harness.instrumented("zerobatch"):
    from zerobatch import protocol as p
    from zerobatch.broker import _aggregator_py
    from zerobatch.broker.core import BrokerCore
    from zerobatch.config import ModelConfig

MS = 1_000_000
S = 1_000_000_000
MODEL = "echo"
#: who the fuzzed messages come from: the broker keys its state by these identities
FRONT_IDENTITIES = (b"c1", b"c2", b"")
BACK_IDENTITIES = (b"w1", b"w2", b"w1" + p.HEARTBEAT_SUFFIX, b"w3" + p.HEARTBEAT_SUFFIX)
#: the well-formed request sent after the fuzzed ones, and the worker that may run it
PROBE_CLIENT = b"probe-client"
PROBE_RID = b"probe-rid"
PROBE_BODY = b"probe-body"
PROBE_WORKER = b"probe-worker"
#: how far past the last fuzzed message the probe looks for its answer (the probe's own
#: timeout is 1 s; a worker that stopped answering is lost after 3 s of silence)
PROBE_STEPS_NS = (0, 10 * MS, 100 * MS, 5 * S, 200 * S, 400 * S)

_FRONT, _BACK, _TICK = "front", "back", "tick"
_TICK_UNIT_MS = 20


def make_core(aggregator_class: Any = None) -> BrokerCore:
    """A core with two versions of one model, one with a tight queue and a batch delay
    (admission by deadline), one adaptive (admission by queue)."""
    core = BrokerCore(aggregator_class or _aggregator_py.Aggregator, max_request_bytes=256)
    core.add_model(ModelConfig(name=MODEL, path="/nowhere", version="1.0", batch_size=2,
                               max_batch_delay_ms=5, max_queue=4, batch_policy="full_delay",
                               response_timeout_s=60))
    core.add_model(ModelConfig(name=MODEL, path="/nowhere", version="2.0", batch_size=3,
                               max_batch_delay_ms=1, max_queue=6, batch_policy="adaptive",
                               admission="queue", response_timeout_s=60))
    return core


# ------------------------------------------------------------------ inputs

def decode_ops(data: bytes) -> list[tuple]:
    """The operations an input stands for. Each record is two bytes, `op` and `arg`, then
    for a message `arg & 7` frames (u16 LE length, bytes):

    - op & 3 == 0: a client message from FRONT_IDENTITIES[arg >> 3 (mod 3)];
    - op & 3 == 1: a worker message from BACK_IDENTITIES[arg >> 3 (mod 4)];
    - otherwise: a tick, `arg * 20` ms after the last one;
    - op & 4: the frames arrive as zmq.Frame objects (as the socket loop hands them on)."""
    ops: list[tuple] = []
    at = 0
    while at + 2 <= len(data):
        op, arg = data[at], data[at + 1]
        at += 2
        kind = op & 3
        if kind > 1:
            ops.append((_TICK, arg * _TICK_UNIT_MS))
            continue
        identities = FRONT_IDENTITIES if kind == 0 else BACK_IDENTITIES
        frames, at = _harness.take_frames(data, at, arg & 7)
        if op & 4:
            frames = [zmq.Frame(frame) for frame in frames]
        ops.append((_FRONT if kind == 0 else _BACK, identities[(arg >> 3) % len(identities)],
                    frames))
    return ops


def encode_ops(ops: Iterable[tuple]) -> bytes:
    """decode_ops' inverse (bytes frames only), for seeds and hypothesis-made inputs."""
    out = []
    for op in ops:
        if op[0] == _TICK:
            out.append(bytes((2, min(op[1] // _TICK_UNIT_MS, 255))))
            continue
        kind, identity, frames = op
        identities = FRONT_IDENTITIES if kind == _FRONT else BACK_IDENTITIES
        if len(frames) > 7:
            raise ValueError("a record holds at most 7 frames")
        out.append(bytes((0 if kind == _FRONT else 1,
                          len(frames) | identities.index(identity) << 3)))
        out.append(_harness.put_frames(frames))
    return b"".join(out)


# ------------------------------------------------------------------ checks

def run_ops(core: BrokerCore, ops: Iterable[tuple], now_ns: int = 0) -> int:
    """Feed ops to core, checking what it sends and its books after each; returns the clock
    at the end. Any exception is a bug."""
    for op in ops:
        if op[0] == _TICK:
            now_ns += op[1] * MS
            core.on_tick(now_ns)
        elif op[0] == _FRONT:
            core.on_front([op[1], *op[2]], now_ns)
        else:
            core.on_back([op[1], *op[2]], now_ns)
        check_sent(core)
        check_books(core)
        core.out_front.clear()
        core.out_back.clear()
    return now_ns


def check_sent(core: BrokerCore) -> None:
    """Everything the core sends parses as the protocol says."""
    for message in p.coalesce_client_messages(list(core.out_front)):
        p.parse_client_replies(message[1:])
    for message in core.out_back:
        command = p.check_envelope(message[1:], 2)
        if command in (p.W_BATCH, p.W_BATCHES):
            p.parse_batch(message[1:])
        elif command not in (p.W_HEARTBEAT, p.W_DISCONNECT):
            raise AssertionError(f"the broker sent a worker command {command!r}")


def check_books(core: BrokerCore) -> None:
    """Waiting payloads match the aggregators; in-flight batches match their workers; every
    worker is known by its own worker id."""
    assert not has_misnamed_worker(core), "a worker is registered under another worker id"
    for versions in core.models.values():
        for queue in versions.values():
            assert len(queue.pending) == len(queue.aggregator), queue.config.key
            for worker in queue.idle:
                assert worker.batch is None and core.workers.get(worker.identity) is worker
    for batch_id, batch in core.batches.items():
        worker = batch.worker
        assert core.workers.get(worker.identity) is worker, f"batch {batch_id}: lost worker"
        assert batch is worker.batch or batch is worker.next_batch, f"batch {batch_id}"


def check_still_serves(core: BrokerCore, now_ns: int) -> tuple:
    """Send a well-formed request from a new client and bring up a fresh echo worker; the
    request must get exactly one final answer (REPLY or ERROR), and a REPLY must carry its
    body back. Returns that answer (command, rid, a, body)."""
    answers: list[tuple] = []
    route = p.encode_route(MODEL, None, 1000)
    core.on_front([PROBE_CLIENT] + p.encode_request(PROBE_RID, route, p.encode_meta(
        "application/octet-stream"), PROBE_BODY), now_ns)
    core.on_back([PROBE_WORKER] + p.encode_ready(MODEL, "1.0", PROBE_WORKER.decode(), None, 1),
                 now_ns)
    for step_ns in PROBE_STEPS_NS:
        at_ns = now_ns + step_ns
        core.on_tick(at_ns)
        _serve_probe_worker(core, at_ns)
        for message in p.coalesce_client_messages(core.out_front):
            if message[0] == PROBE_CLIENT:
                answers.extend(p.parse_client_replies(message[1:]))
        core.out_front.clear()
        check_books(core)
    finals = [answer for answer in answers if answer[0] != p.PARTIAL]
    assert len(finals) == 1, f"the probe request got {len(finals)} final answers: {finals}"
    command, rid, _a, body = finals[0]
    assert rid == PROBE_RID
    if command == p.REPLY:
        assert bytes(body) == PROBE_BODY
    return finals[0]


def _serve_probe_worker(core: BrokerCore, now_ns: int) -> None:
    """Answer every batch sent to the probe worker, as an echo worker does, until none is
    left (an answer may let the core send the next one)."""
    while True:
        batches = [message for message in core.out_back
                   if message[0] == PROBE_WORKER and message[2] in (p.W_BATCH, p.W_BATCHES)]
        check_sent(core)
        core.out_back.clear()
        if not batches:
            return
        for message in batches:
            batch_id, pairs, _sizes = p.parse_batch(message[1:])
            answers = [p.encode_reply_answer(p.encode_reply_meta(200, None), body)
                       for _meta, body in pairs]
            core.on_back([PROBE_WORKER] + p.encode_worker_reply(batch_id, answers), now_ns)


def has_misnamed_worker(core: BrokerCore) -> bool:
    """Whether a worker said READY with a worker id that is not its identity and was kept
    (`worker_lost` looks workers up by id: such a worker would never be lost)."""
    return any(worker.worker_id.encode() != identity
               for identity, worker in core.workers.items())


def check_ops(ops: Iterable[tuple], aggregator_class: Any = None) -> tuple:
    """All the checks on one sequence of operations; returns the probe's answer."""
    core = make_core(aggregator_class)
    now_ns = run_ops(core, ops)
    return check_still_serves(core, now_ns)


def test_one_input(data: bytes) -> None:
    check_ops(decode_ops(data))


# ------------------------------------------------------------------ seeds

def _request(rid: bytes, version: str | None = None, timeout_ms: int = 0,
             body: bytes = b"x") -> list[bytes]:
    return p.encode_request(rid, p.encode_route(MODEL, version, timeout_ms),
                            p.encode_meta("text/plain", {"x-a": "b"}, "id-1"), body)


def _ready(identity: bytes, version: str = "1.0") -> tuple:
    return (_BACK, identity, p.encode_ready(MODEL, version, identity.decode(), None, 7))


def _reply(batch_id: int, count: int) -> list[bytes]:
    return p.encode_worker_reply(batch_id, [
        p.encode_reply_answer(p.encode_reply_meta(200, "text/plain"), b"ok")] * count)


def seeds() -> list[bytes]:
    """Well-formed conversations (batch ids count from 1 in a fresh core)."""
    bad_route = p.packb([MODEL, None, -5])
    return [encode_ops(ops) for ops in (
        [(_FRONT, b"c1", _request(b"r1")), (_FRONT, b"c1", _request(b"r2")), _ready(b"w1"),
         (_BACK, b"w1", _reply(1, 2)), (_TICK, 100)],
        [_ready(b"w1"), (_FRONT, b"c2", [p.VERSION, p.REQUEST,
                                         *_request(b"a", timeout_ms=50)[2:],
                                         *_request(b"b", "2.0")[2:]]),
         (_TICK, 10), (_BACK, b"w1", p.encode_worker_partial(1, 0, p.encode_reply_meta(), b"c")),
         (_BACK, b"w1", _reply(1, 1)), (_BACK, b"w1" + p.HEARTBEAT_SUFFIX, p.HEARTBEAT_FRAMES)],
        [(_FRONT, b"c1", p.encode_control(b"k1", "ping")),
         (_FRONT, b"c1", p.encode_control(b"k2", "describe")),
         (_FRONT, b"c2", p.encode_control(b"k3", "nope", x=1))],
        [(_BACK, b"w2", p.encode_load_failed(MODEL, "1.0", "w2", "boom")),
         (_FRONT, b"c1", _request(b"r3")), _ready(b"w2"), (_BACK, b"w2", p.DISCONNECT_FRAMES)],
        [(_FRONT, b"c1", [p.VERSION, p.REQUEST, p.rid_head(b"r") + struct.pack("<H", 9)
                          + bad_route, b"x"]),
         (_FRONT, b"", [p.VERSION, p.REQUEST, b"\x05ab", b"", b"\x01q"]),
         (_FRONT, b"c2", [p.VERSION, b"\x09", b"rid", b"x"]), (_TICK, 255)],
    )]


if __name__ == "__main__":
    _harness.run("broker_frames", test_one_input, seeds())
