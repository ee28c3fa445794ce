"""Streaming end to end: a handler calling send_intermediate_predict_response three times,
packed into a .mar by the real torch-model-archiver, received chunk by chunk over ZeroMQ
(Client.stream) and as a chunked HTTP response."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys

import pytest

from tests.support.servers import TEST_MODELS, finish, json_body, start_server

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")


@pytest.fixture(scope="module")
def streaming_server(tmp_path_factory):
    export = tmp_path_factory.mktemp("export")
    handler = os.path.join(TEST_MODELS, "streaming", "streaming_handler.py")
    result = subprocess.run([REAL_ARCHIVER, "--model-name", "streaming", "--version", "1.0",
                             "--handler", handler, "--export-path", str(export)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    server = start_server({"streaming": str(export / "streaming.mar"), "echo": "echo"},
                          "--batch-size", "4", "--max-batch-delay", "20")
    yield server
    finish(server)


def test_chunks_arrive_in_order_over_zeromq(streaming_server):
    with streaming_server.client() as client:
        chunks = list(client.stream("streaming", "abc", timeout_ms=10_000))
        assert chunks == [b"abc-0,", b"abc-1,", b"abc-2,", b"abc-end"]
        # predict joins the same chunks into one body
        assert client.predict("streaming", "xy", timeout_ms=10_000).body == \
            b"xy-0,xy-1,xy-2,xy-end"
        # a handler that does not stream: one item, the whole body
        assert list(client.stream("echo", "plain", timeout_ms=10_000)) == [b"plain"]


def test_a_batch_streams_to_each_of_its_requests(streaming_server):
    with streaming_server.client() as client:
        pending = [client.submit("streaming", f"r{i}", timeout_ms=10_000) for i in range(4)]
        assert [p.result().body for p in pending] == [
            f"r{i}-0,r{i}-1,r{i}-2,r{i}-end".encode() for i in range(4)]


def test_chunks_arrive_as_a_chunked_http_response(streaming_server):
    conn = http.client.HTTPConnection("127.0.0.1", streaming_server.http_port, timeout=30)
    try:
        conn.request("POST", "/predictions/streaming", body=b"hello",
                     headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("ts_stream_next") == "true"  # TorchServe's header
        assert response.getheader("Content-Type") is None  # the handler set none (TorchServe)
        assert response.getheader("x-request-id")
        assert response.read() == b"hello-0,hello-1,hello-2,hello-end"
    finally:
        conn.close()
    # a non-streaming model still answers with a plain, sized response
    status, headers, body = streaming_server.predict("echo", b'{"a": 1}')
    lowered = {k.lower(): v for k, v in headers.items()}
    assert status == 200 and "content-length" in lowered
    assert json_body(body) == {"a": 1}
