"""The broker's local control socket as the management and metrics processes use it."""

from __future__ import annotations

from typing import Any

from zerobatch.api.aio_client import AsyncClient


class BrokerControl:
    """The AsyncClient of the broker's control socket, made on first use inside the server's
    event loop (an AsyncClient belongs to the loop it was made in), closed at shutdown (as
    a Falcon middleware: `app.add_middleware(control)`)."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._client: AsyncClient | None = None

    async def control(self, op: str, **kwargs: Any) -> dict:
        if self._client is None:
            self._client = AsyncClient(self._address)
        return await self._client.control(op, **kwargs)

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
