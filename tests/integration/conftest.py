"""Fixtures that start real zerobatch servers on loopback (tests/support/servers.py)."""

from __future__ import annotations

import pytest

from tests.support.servers import Server, finish, start_server

pytestmark = pytest.mark.integration


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
