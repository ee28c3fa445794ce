"""`context.get_sequence_id(i)` and the sequence header keys, as TorchServe's context has them."""

from __future__ import annotations

from zerobatch.worker.context import Context, RequestProcessor


def make_context() -> Context:
    return Context("stateful", "/nowhere", {}, batch_size=2, gpu=None)


def test_get_sequence_id_reads_each_requests_header():
    context = make_context()
    context.request_processor = [RequestProcessor({"ts_request_sequence_id": "seq_0"}),
                                 RequestProcessor({})]
    assert context.get_sequence_id(0) == "seq_0"
    assert context.get_sequence_id(1) is None
    assert (context.header_key_sequence_id, context.header_key_sequence_start,
            context.header_key_sequence_end) == (
        "ts_request_sequence_id", "ts_request_sequence_start", "ts_request_sequence_end")


def test_the_header_names_follow_torchserves_variables(monkeypatch):
    monkeypatch.setenv("TS_REQUEST_SEQUENCE_ID", "session")
    monkeypatch.setenv("TS_REQUEST_SEQUENCE_END", "session_end")
    context = make_context()
    context.request_processor = [RequestProcessor({"session": "s1"})]
    assert context.get_sequence_id(0) == "s1"
    assert context.header_key_sequence_end == "session_end"
    assert context.header_key_sequence_start == "ts_request_sequence_start"
