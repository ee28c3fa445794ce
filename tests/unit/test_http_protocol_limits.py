"""api/http_protocol.py's limits, on a fake transport (no sockets): the request head measured
before the parser sees it (exactly at the limit, across reads, pipelined inside a read, the
trailer fields of a chunked body), the body's min-rate deadline, refusals answered in the
JSON shape after the answers before them, the connection cap, the refusal log's rate limit;
and api/frontend.py raising the open file limit."""

from __future__ import annotations

import asyncio
import json
import logging
import resource

import pytest
import uvicorn
from uvicorn.server import ServerState

from zerobatch.api import frontend
from zerobatch.api.http_protocol import CoalescingHttpToolsProtocol, RefusalCounts

MAX_HEADER_BYTES = 256
TIMEOUT_S = 1.0
MIN_RATE_BYTES_S = 100


async def echo_app(scope, receive, send):
    """Answers each request with its body, after reading it whole."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


class FakeTransport:
    """What the event loop hands a protocol: records the bytes written and the close."""

    def __init__(self, protocol, loop) -> None:
        self.protocol = protocol
        self.loop = loop
        self.written = bytearray()
        self.closed = False

    def write(self, data) -> None:
        assert not self.closed, "written after the close"
        self.written += data

    def writelines(self, lines) -> None:
        for data in lines:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class CountingParser:
    """The protocol's parser, counting the bytes fed to it."""

    def __init__(self, parser) -> None:
        self._parser = parser
        self.fed_bytes = 0

    def feed_data(self, data) -> None:
        self.fed_bytes += len(data)
        self._parser.feed_data(data)

    def __getattr__(self, name):
        return getattr(self._parser, name)


def connect(loop, state: ServerState | None = None, **limits):
    config = uvicorn.Config(echo_app, log_config=None, proxy_headers=False, lifespan="off")
    config.load()
    limits = {"read_timeout_s": TIMEOUT_S, "min_rate_bytes_s": MIN_RATE_BYTES_S,
              "max_header_bytes": MAX_HEADER_BYTES, **limits}
    protocol = CoalescingHttpToolsProtocol(config=config, server_state=state or ServerState(),
                                           app_state={}, _loop=loop, **limits)
    transport = FakeTransport(protocol, loop)
    protocol.connection_made(transport)
    protocol.parser = CountingParser(protocol.parser)
    return protocol, transport


async def settle() -> None:
    """Let the request tasks and the turn writer run."""
    for _ in range(30):
        await asyncio.sleep(0)


def exchange(*reads: bytes, **limits):
    """Feeds each read to a fresh connection in turn; (responses, closed, bytes fed to the
    parser)."""
    async def main():
        protocol, transport = connect(asyncio.get_running_loop(), **limits)
        parser = protocol.parser  # the protocol drops it once the connection is lost
        for data in reads:
            if not transport.closed:
                protocol.data_received(data)
            await settle()
        return split(bytes(transport.written)), transport.closed, parser.fed_bytes
    return asyncio.run(main())


def split(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in raw."""
    responses = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        responses.append((int(head.split(b" ")[1]), raw[:length]))
        raw = raw[length:]
    return responses


def post(body: bytes, head_bytes: int | None = None, *headers: bytes) -> bytes:
    """A POST of body; with head_bytes, padded to exactly that size of head."""
    lines = [b"POST /m HTTP/1.1", b"Content-Length: %d" % len(body), *headers]
    if head_bytes is not None:
        lines.append(b"X-Pad: ")
        lines[-1] += b"p" * (head_bytes - len(b"\r\n".join(lines) + b"\r\n\r\n"))
    request = b"\r\n".join(lines) + b"\r\n\r\n"
    assert head_bytes is None or len(request) == head_bytes
    return request + body


def refused(status: int, type_name: str):
    return lambda response: (response[0] == status
                             and json.loads(response[1])["type"] == type_name)


is_431 = refused(431, "HeaderTooLarge")


# ---------------------------------------------------------------- request heads

def test_a_head_of_exactly_the_limit_passes_with_its_body_in_the_same_read():
    request = post(b"x" * 10_000, MAX_HEADER_BYTES)
    responses, closed, _fed = exchange(request)
    assert responses == [(200, b"x" * 10_000)] and not closed


def test_a_head_one_byte_over_is_refused_and_the_parser_got_no_more_than_the_limit():
    responses, closed, fed = exchange(post(b"x" * 10_000, MAX_HEADER_BYTES + 1))
    assert len(responses) == 1 and is_431(responses[0]) and closed
    assert fed == MAX_HEADER_BYTES


def test_the_head_is_counted_across_reads():
    request = post(b"hi", MAX_HEADER_BYTES + 1)
    responses, closed, fed = exchange(*[request[i:i + 7] for i in range(0, len(request), 7)])
    assert len(responses) == 1 and is_431(responses[0]) and closed
    assert fed <= MAX_HEADER_BYTES
    request = post(b"hi", MAX_HEADER_BYTES)
    responses, closed, _fed = exchange(*[request[i:i + 7] for i in range(0, len(request), 7)])
    assert responses == [(200, b"hi")] and not closed


def test_a_megabyte_header_is_refused_after_the_limit():
    head = b"GET / HTTP/1.1\r\nX-Huge: " + b"h" * 1_000_000
    responses, closed, fed = exchange(*[head[i:i + 65536] for i in range(0, len(head), 65536)])
    assert len(responses) == 1 and is_431(responses[0]) and closed
    assert fed == MAX_HEADER_BYTES


def test_each_pipelined_head_has_its_own_limit():
    one = post(b"ok", MAX_HEADER_BYTES)
    responses, closed, _fed = exchange(one * 20)  # one read, 20 times the limit
    assert responses == [(200, b"ok")] * 20 and not closed


@pytest.mark.parametrize("cut", [0, 100, MAX_HEADER_BYTES // 2, MAX_HEADER_BYTES - 1])
def test_a_pipelined_head_over_the_limit_is_refused_after_the_answer_before_it(cut):
    """It begins in the read that ends the request before it: those bytes escape the count
    as it arrives, and it is measured once whole. `cut` of its bytes come in a second read."""
    stream = post(b"first") + post(b"second", MAX_HEADER_BYTES + 1)
    split_at = len(post(b"first")) + cut
    reads = [stream[:split_at], stream[split_at:]] if cut else [stream]
    responses, closed, _fed = exchange(*reads)
    assert responses[0] == (200, b"first")
    assert len(responses) == 2 and is_431(responses[1]) and closed


def test_trailer_fields_count_as_a_head():
    def chunked(trailer_bytes: int) -> bytes:
        head = b"POST /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
        trailer = b"X-T: " + b"t" * (trailer_bytes - len(b"X-T: \r\n\r\n")) + b"\r\n\r\n"
        return head + trailer
    assert exchange(chunked(MAX_HEADER_BYTES))[0] == [(200, b"abc")]
    for reads in ([chunked(MAX_HEADER_BYTES + 1)],  # in the read that holds the chunks
                  [chunked(MAX_HEADER_BYTES + 1)[:70], chunked(MAX_HEADER_BYTES + 1)[70:]],
                  [chunked(100_000)]):
        responses, closed, _fed = exchange(*reads)
        assert len(responses) == 1 and is_431(responses[0]) and closed, responses
        assert json.loads(responses[0][1])["message"].startswith("trailer fields over")


def test_a_chunked_body_of_many_chunks_is_not_taken_for_a_head():
    body = b"".join(b"%x\r\n%s\r\n" % (100, b"c" * 100) for _ in range(100))
    request = b"POST /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"
    responses, _closed, _fed = exchange(*[request[i:i + 1000]
                                          for i in range(0, len(request), 1000)])
    assert responses == [(200, b"c" * 10_000)]


# ---------------------------------------------------------------- invalid requests

def test_an_invalid_request_after_good_ones_is_answered_400_after_them():
    responses, closed, _fed = exchange(post(b"one") + post(b"two") + b"GARBAGE\r\n\r\n"
                                       + post(b"never"))
    assert responses[:2] == [(200, b"one"), (200, b"two")]
    assert len(responses) == 3 and refused(400, "BadRequest")(responses[2]) and closed


def test_a_bad_chunk_of_a_request_waiting_its_turn_is_its_answer_in_its_turn():
    """The second request's body turns out malformed while the first is still unanswered:
    the first is answered, then the second's 400, and the connection closes."""
    responses, closed, _fed = exchange(
        post(b"first") + b"POST /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\nzz\r\n")
    assert responses[0] == (200, b"first")
    assert len(responses) == 2 and refused(400, "BadRequest")(responses[1]) and closed


def test_a_bad_chunk_is_answered_400_at_once():
    responses, closed, _fed = exchange(
        b"POST /m HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
    assert len(responses) == 1 and refused(400, "BadRequest")(responses[0]) and closed
    assert json.loads(responses[0][1])["message"] == \
        "invalid HTTP request: Invalid character in chunk size"


# ---------------------------------------------------------------- slow clients

def test_a_body_earns_time_per_byte_and_its_deadline_never_restarts():
    async def main():
        loop = asyncio.get_running_loop()
        protocol, transport = connect(loop)
        began = loop.time()
        protocol.data_received(b"POST /m HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")
        headers_deadline_s = protocol.read_deadline_s
        assert began + TIMEOUT_S <= headers_deadline_s <= loop.time() + TIMEOUT_S
        for _ in range(5):
            await asyncio.sleep(0.01)  # time passes between pieces: no restart
            protocol.data_received(b"x" * 10)
        assert protocol.read_deadline_s == pytest.approx(
            headers_deadline_s + 50 / MIN_RATE_BYTES_S)
        protocol.read_timed_out()  # what the sweep calls once it is past
        await settle()
        return split(bytes(transport.written)), transport.closed
    responses, closed = asyncio.run(main())
    assert len(responses) == 1 and refused(408, "RequestTimeout")(responses[0]) and closed


def test_a_request_waiting_behind_another_is_not_timed_out():
    async def main():
        loop = asyncio.get_running_loop()
        protocol, transport = connect(loop)
        protocol.data_received(post(b"first") + post(b"second")[:-3])  # second: body short
        protocol.cycle.more_body = True  # as if it were still waiting to run
        protocol.read_timed_out()  # it waits behind the first's answer: not the client's
        assert not transport.closed and protocol.read_deadline_s is not None
        await settle()
        protocol.data_received(b"ond")
        await settle()
        return split(bytes(transport.written))
    assert asyncio.run(main()) == [(200, b"first"), (200, b"second")]


# ---------------------------------------------------------------- connection cap and log

def test_a_connection_over_the_cap_is_answered_503_and_logged_once(caplog):
    async def main():
        loop = asyncio.get_running_loop()
        state = ServerState()
        kept = [connect(loop, state, max_connections=2) for _ in range(2)]
        over = [connect(loop, state, max_connections=2) for _ in range(3)]
        await settle()
        return ([transport.closed for _p, transport in kept],
                [(split(bytes(transport.written)), transport.closed) for _p, transport in over])
    with caplog.at_level(logging.WARNING, logger="zerobatch.api.http_protocol"):
        kept, over = asyncio.run(main())
    assert kept == [False, False]
    for responses, closed in over:
        assert len(responses) == 1 and refused(503, "TooManyConnections")(responses[0])
        assert closed
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(
        "refused 1 connection over the cap of 2 open connections"), lines


def test_refusals_are_logged_at_once_then_at_most_once_an_interval_per_kind():
    counts = RefusalCounts(interval_s=10.0)
    assert counts.add("a", now_s=100.0) == [("a", 1)]
    assert counts.add("a", now_s=101.0) == []
    assert counts.add("b", now_s=102.0) == [("b", 1)]  # its own kind, its own interval
    assert counts.add("a", now_s=105.0) == []
    assert counts.due(now_s=109.9) == []
    assert counts.due(now_s=110.0) == [("a", 2)]
    assert counts.due(now_s=125.0) == []  # nothing new
    assert counts.add("a", now_s=125.0) == [("a", 1)]


# ---------------------------------------------------------------- open file limit

def test_the_front_end_raises_a_low_open_file_limit_to_what_its_cap_needs():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 64
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        wanted = 1000 + frontend.FD_MARGIN
        expected = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        assert frontend.raise_open_file_limit(1000) == expected
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (expected, hard)
        assert frontend.raise_open_file_limit(10) == expected  # high enough: left alone
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
