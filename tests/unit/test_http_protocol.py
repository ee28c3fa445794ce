"""api/http_protocol.py: what one event-loop turn writes to a connection reaches its transport
as one call, in order; a close flushes first; the rest of the transport shows through."""

from __future__ import annotations

import asyncio

from zerobatch.api.http_protocol import _TurnWriter


class RecordingTransport:
    """Stands in for the socket transport the event loop hands a protocol."""

    def __init__(self) -> None:
        self.calls: list = []
        self.closing = False

    def write(self, data) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, lines) -> None:
        self.calls.append(("writelines", [bytes(data) for data in lines]))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close",))

    def get_extra_info(self, name, default=None):
        return f"extra {name}"


def test_a_turns_writes_go_out_as_one_call_and_a_close_flushes_first():
    async def main() -> list:
        transport = RecordingTransport()
        writer = _TurnWriter(transport, asyncio.get_running_loop())
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        writer.write(memoryview(b"body"))
        assert transport.calls == []  # nothing before the turn ends
        await asyncio.sleep(0)
        writer.write(b"alone")
        await asyncio.sleep(0)
        writer.writelines([b"last", b"lines"])
        writer.close()
        writer.write(b"after close")  # the transport is closing: dropped
        await asyncio.sleep(0)
        assert writer.get_extra_info("peername") == "extra peername"
        return transport.calls

    assert asyncio.run(main()) == [
        ("writelines", [b"HTTP/1.1 200 OK\r\n\r\n", b"body"]),
        ("write", b"alone"),
        ("writelines", [b"last", b"lines"]),
        ("close",),
    ]
