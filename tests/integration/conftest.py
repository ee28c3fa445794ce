"""Fixtures that start real zerobatch servers on loopback (tests/support/servers.py), the
worker tests' fake broker (`worker_broker`), the client tests' fake broker thread (`broker`;
`echo_broker` answers each request with its body) and a runner of coroutines on a fresh
asyncio loop and on uvloop (`run`)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.support.fake_client_broker import FakeBroker as ClientSideBroker
from tests.support.fake_client_broker import echo
from tests.support.fake_worker_broker import FakeBroker as WorkerSideBroker
from tests.support.servers import Server, finish, start_server

pytestmark = pytest.mark.integration

#: the longest a client test's coroutine may run (twice the fake broker's own wait)
RUN_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def shared_server():
    """One server with the test models most integration tests use."""
    server = start_server(
        {"echo": "echo", "reporter": "batch_size_reporter", "slow": "slow",
         "failing": "failing"},
        "--batch-size", "4", "--max-batch-delay", "300", "--batch-policy", "full_delay",
        "--max-queue", "8", "--frontends", "2", "--admission", "queue")
    yield server
    finish(server)


@pytest.fixture
def make_server():
    """Start servers with custom flags inside one test; all stopped at the end."""
    started: list[Server] = []

    def make(models: dict[str, str], *flags: str, env: dict | None = None) -> Server:
        server = start_server(models, *flags, env=env)
        started.append(server)
        return server

    yield make
    for server in started:
        finish(server)


@pytest.fixture
def worker_broker():
    """The broker's side of the worker protocol, for tests that run a real worker."""
    with WorkerSideBroker() as fake:
        yield fake


@pytest.fixture
def broker():
    """The broker's client-facing ROUTER, played in a thread, for tests of the clients."""
    with ClientSideBroker() as fake:
        yield fake


@pytest.fixture
def echo_broker():
    """A fake client-facing broker that answers every request with its own body."""
    with ClientSideBroker(echo) as fake:
        yield fake


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine to completion on a fresh loop of each kind, bounded in time."""
    def runner(coro):
        async def bounded():
            return await asyncio.wait_for(coro, RUN_LIMIT_S)
        if request.param == "uvloop":
            return uvloop.run(bounded())
        return asyncio.run(bounded())
    return runner
