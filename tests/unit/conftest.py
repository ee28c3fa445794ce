"""Fixtures shared by the unit tests: the client tests' fake broker thread (`broker`), the
worker tests' fake broker (`worker_broker`), and a runner of coroutines on a fresh asyncio
loop and on uvloop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.support.fake_client_broker import FakeBroker
from tests.support.fake_worker_broker import FakeBroker as WorkerSideBroker

#: the longest a client test's coroutine may run (twice the fake broker's own wait)
RUN_LIMIT_S = 10.0


@pytest.fixture
def broker():
    fake = FakeBroker()
    yield fake
    fake.close()


@pytest.fixture
def worker_broker():
    """The broker's side of the worker protocol, for tests that run a real worker."""
    with WorkerSideBroker() as fake:
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
