"""The heartbeat thread's arguments (its beats and loss detection: tests/integration)."""

import pytest
import zmq

from zerobatch.worker.heartbeat import Heartbeat


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="heartbeat interval must be positive"):
        Heartbeat(zmq.Context.instance(), "tcp://127.0.0.1:1", "w", 0)
