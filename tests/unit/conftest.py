"""Unit tests open no sockets and start no processes: this fence makes that a rule.

Every unit test runs with a socket's `bind` and `connect`, `subprocess.Popen` and ZeroMQ's
`Context.socket` replaced by a stand-in that fails the test with where it belongs; tests that
need them live in tests/integration. (An event loop's own self-pipe, a socketpair that binds
and connects nothing, stays allowed.)
"""

from __future__ import annotations

import socket
import subprocess

import pytest
import zmq


class FencedOff(AssertionError):
    """A unit test reached for a socket or a process."""


def _fenced(what: str):
    def refuse(*_args, **_kwargs):
        raise FencedOff(f"unit tests do not {what}: move this test to tests/integration")
    return refuse


@pytest.fixture(autouse=True)
def no_sockets_or_processes(monkeypatch):
    for method in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, method, _fenced("open sockets"))
    monkeypatch.setattr(subprocess, "Popen", _fenced("start processes"))
    monkeypatch.setattr(zmq.Context, "socket", _fenced("open ZeroMQ sockets"))


@pytest.fixture(params=["python", "compiled"])
def core(request):
    """A BrokerCore on each aggregator twin (tests.support.broker_core drives it)."""
    from tests.support.broker_core import make_core
    return make_core(request.param)


@pytest.fixture
def spans():
    """An in-memory exporter behind this process's tracer, for one test (OpenTelemetry's SDK
    is imported only by the tests that ask for it)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from zerobatch import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_for_tests(provider.get_tracer("test"))
    try:
        yield exporter
    finally:
        tracing.reset_for_tests()
        provider.shutdown()
