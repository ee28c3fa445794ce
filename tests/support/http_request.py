"""One HTTP request to a server on loopback, for the tests that start real front ends."""

from __future__ import annotations

import http.client


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict | None = None, timeout_s: float = 30.0
                 ) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request on a fresh connection to 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()
