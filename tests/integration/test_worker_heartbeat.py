"""The heartbeat thread against a fake broker on loopback: beats on the `.hb` identity, detects a
silent broker or a lost parent."""

import os
import time

import pytest
import zmq

from tests.support.fake_worker_broker import FakeBroker
from zerobatch import protocol
from zerobatch.worker.heartbeat import Heartbeat

pytestmark = pytest.mark.integration

HB_IDENTITY = b"w-hb" + protocol.HEARTBEAT_SUFFIX


@pytest.fixture
def heartbeats():
    started = []

    def start(broker, interval_ms, **kwargs):
        beat = Heartbeat(zmq.Context.instance(), broker.address, "w-hb", interval_ms, **kwargs)
        started.append(beat)
        beat.start()
        return beat

    yield start
    for beat in started:
        beat.stop(timeout_s=2)
        assert not beat.is_alive()


def test_beats_arrive_and_answers_keep_it_alive(heartbeats):
    with FakeBroker() as broker:
        beat = heartbeats(broker, interval_ms=50)
        broker.recv(lambda f: f[0] == HB_IDENTITY, timeout_s=5)
        broker.pump(0.6)  # answers each beat for 0.6 s: four liveness periods
        assert not beat.lost.is_set()
        beats = [t for ident, t in broker.heartbeats if ident == HB_IDENTITY]
        assert len(beats) >= 6
        gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
        assert max(gaps) < 0.5


def test_silent_broker_is_lost_after_liveness_intervals(heartbeats):
    with FakeBroker(answer_heartbeats=False) as broker:
        start = time.monotonic()
        beat = heartbeats(broker, interval_ms=50, liveness=3)
        assert beat.lost.wait(5)
        assert time.monotonic() - start >= 0.15
        assert "no message from the broker" in beat.lost_reason
        beat.join(2)
        assert not beat.is_alive()


def test_touch_counts_as_a_sign_of_life(heartbeats):
    with FakeBroker(answer_heartbeats=False) as broker:
        beat = heartbeats(broker, interval_ms=100)
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            beat.touch()
            broker.pump(0.05)
        assert not beat.lost.is_set()


def test_lost_parent_is_detected(heartbeats):
    with FakeBroker() as broker:
        beat = heartbeats(broker, interval_ms=1000, parent_pid=os.getppid() + 100000)
        assert beat.lost.wait(2)
        assert "parent process" in beat.lost_reason


def test_stop_is_prompt(heartbeats):
    with FakeBroker() as broker:
        beat = heartbeats(broker, interval_ms=10000)
        broker.recv(lambda f: f[0] == HB_IDENTITY, timeout_s=5)
        start = time.monotonic()
        beat.stop(timeout_s=2)
        assert not beat.is_alive()
        assert time.monotonic() - start < 1
        assert not beat.lost.is_set()

