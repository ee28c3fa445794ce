"""The unit tests' fence (tests/unit/conftest.py) holds: no sockets, no processes."""

from __future__ import annotations

import socket
import subprocess

import pytest
import zmq


def test_a_socket_cannot_connect_or_bind():
    with socket.socket() as probe:
        with pytest.raises(AssertionError, match="move this test to tests/integration"):
            probe.connect(("127.0.0.1", 9))
        with pytest.raises(AssertionError, match="unit tests do not open sockets"):
            probe.bind(("127.0.0.1", 0))


def test_a_process_cannot_start():
    with pytest.raises(AssertionError, match="unit tests do not start processes"):
        subprocess.run(["true"], check=False)


def test_a_zeromq_socket_cannot_be_made():
    with pytest.raises(AssertionError, match="unit tests do not open ZeroMQ sockets"):
        zmq.Context.instance().socket(zmq.DEALER)
