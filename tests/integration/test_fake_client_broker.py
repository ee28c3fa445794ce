"""The fake client-side broker (tests/support/fake_client_broker.py) against a raw DEALER."""

from __future__ import annotations

import zmq

from tests.support.fake_client_broker import WAIT_S, FakeBroker, echo
from zerobatch import protocol


def test_fake_broker_echoes_a_raw_dealer() -> None:
    with FakeBroker(echo) as broker:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVTIMEO, int(WAIT_S * 1000))
        dealer.connect(broker.address)
        try:
            dealer.send_multipart(protocol.encode_request(
                b"r1", protocol.encode_route("m", None, 0),
                protocol.encode_meta("text/plain"), b"hi"))
            ((command, rid, meta, body),) = protocol.parse_client_replies(
                dealer.recv_multipart())
        finally:
            dealer.close()
        assert (command, rid, body) == (protocol.REPLY, b"r1", b"hi")
        assert protocol.parse_reply_meta(meta) == (200, "text/plain", None)
        msg = broker.next()
        assert msg.route == ("m", None, 0) and msg.content_type == "text/plain"
