"""Fixtures shared by the client tests: a fake broker thread, and a runner of coroutines on a
fresh asyncio loop and on uvloop."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.unit.test_client_fakebroker import FakeBroker

#: the longest a client test's coroutine may run (twice the fake broker's own wait)
RUN_LIMIT_S = 10.0


@pytest.fixture
def broker():
    fake = FakeBroker()
    yield fake
    fake.close()


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
