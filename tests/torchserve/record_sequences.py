"""Record TorchServe 0.12.0's answers for sequence batching (a stateful handler shaped as
pytorch/serve's examples/stateful: tests/torchserve/handlers/stateful_handler.py).

    TORCHSERVE_BIN=/path/to/venv/bin python -m tests.torchserve.record_sequences

writes tests/data/torchserve_answers/sequences.json, each case's request sent one at a time,
in this order:

- EXCHANGE: two sequences named by the client (`ts_request_sequence_id: seq_0` and `seq_1`),
  their requests alternating;
- UNNAMED: one request that names no sequence (TorchServe starts one under an id of its own
  and does not send it back: the handler here sets no response header);
- ENDING: a sequence whose second request carries `ts_request_sequence_end: true`, then more
  requests naming the same id. TorchServe 0.12's SequenceBatching never reads that header:
  the sequence goes on (the handler forgot its sum when it saw the header, so it restarts);
- EXPIRY, on the one-worker model `brief` (BRIEF_CONFIG): a sequence, a pause of
  EXPIRY_PAUSE_S (past sequenceMaxIdleMSec: TorchServe drops the sequence), then the same id
  again, which starts a new sequence under it, on the only worker, whose handler still holds
  the sum.

tests/integration/test_sequence_batching.py builds the same archives with `build_archive` and
compares zerobatch's answers (by default; --zerobatch-answers differs on purpose) with these:
status, body, and the `ts_request_sequence_id` response header (absent in all of them).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from tests.support.torchserve_answers import (
    TORCHSERVE_BIN,
    TorchServe,
    build_scripted_archive,
    save,
)

HANDLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handlers",
                       "stateful_handler.py")
MODEL_NAME = "stateful"
#: the example's model-config.yaml, with an idle time a test outlives
MODEL_CONFIG = """
    minWorkers: 2
    maxWorkers: 2
    batchSize: 4
    maxBatchDelay: 50
    maxNumSequence: 4
    sequenceMaxIdleMSec: 60000
    maxSequenceJobQueueSize: 10
    sequenceBatching: true
"""
#: case -> (sequence id, body), sent in this order, one at a time
EXCHANGE = {
    "seq_0_first": ("seq_0", b"1"),
    "seq_1_first": ("seq_1", b"2"),
    "seq_0_second": ("seq_0", b"3"),
    "seq_1_second": ("seq_1", b"4"),
    "seq_0_third": ("seq_0", b"5"),
    "seq_1_third": ("seq_1", b"6"),
}
UNNAMED = ("unnamed", b"7")
END_HEADER = {"ts_request_sequence_end": "true"}
#: case -> (sequence id, body, more headers), after EXCHANGE and UNNAMED
ENDING = {
    "end_first": ("seq_end", b"10", {}),
    "end_header": ("seq_end", b"5", END_HEADER),
    "end_then_same_id": ("seq_end", b"3", {}),
    "end_then_same_id_again": ("seq_end", b"4", {}),
}
#: a one-worker model whose sequences expire quickly
BRIEF_MODEL = "brief"
BRIEF_IDLE_MS = 300
BRIEF_CONFIG = f"""
    minWorkers: 1
    maxWorkers: 1
    batchSize: 4
    maxBatchDelay: 50
    sequenceMaxIdleMSec: {BRIEF_IDLE_MS}
    sequenceBatching: true
"""
#: case -> (sequence id, body) on BRIEF_MODEL: EXPIRY_BEFORE, a pause, then EXPIRY_AFTER
EXPIRY_BEFORE = {
    "expiry_first": ("seq_brief", b"1"),
    "expiry_second": ("seq_brief", b"2"),
}
EXPIRY_PAUSE_S = 5 * BRIEF_IDLE_MS / 1000
EXPIRY_AFTER = {
    "expired_id": ("seq_brief", b"4"),
    "expired_id_again": ("seq_brief", b"8"),
}


def build_archive(export_dir: str, archiver: str, model_name: str = MODEL_NAME,
                  model_config: str = MODEL_CONFIG) -> str:
    """Pack model_name (a TorchScript identity, HANDLER, model_config) with the
    torch-model-archiver at `archiver` into export_dir; the archive's file name."""
    import torch

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    return build_scripted_archive(archiver, export_dir, model_name, HANDLER, Identity(),
                                  model_config)


def main() -> int:
    answers = {}
    path = f"/predictions/{MODEL_NAME}"
    brief_path = f"/predictions/{BRIEF_MODEL}"
    archiver = os.path.join(TORCHSERVE_BIN, "torch-model-archiver")
    with tempfile.TemporaryDirectory() as store:
        archives = {MODEL_NAME: build_archive(store, archiver),
                    BRIEF_MODEL: build_archive(store, archiver, BRIEF_MODEL, BRIEF_CONFIG)}
        with TorchServe(store, archives) as torchserve:
            for case, (sequence_id, body) in EXCHANGE.items():
                answers[case] = torchserve.record("POST", path, body,
                                                  {"ts_request_sequence_id": sequence_id})
            answers[UNNAMED[0]] = torchserve.record("POST", path, UNNAMED[1])
            for case, (sequence_id, body, headers) in ENDING.items():
                answers[case] = torchserve.record(
                    "POST", path, body, {"ts_request_sequence_id": sequence_id, **headers})
            for case, (sequence_id, body) in EXPIRY_BEFORE.items():
                answers[case] = torchserve.record("POST", brief_path, body,
                                                  {"ts_request_sequence_id": sequence_id})
            time.sleep(EXPIRY_PAUSE_S)
            for case, (sequence_id, body) in EXPIRY_AFTER.items():
                answers[case] = torchserve.record("POST", brief_path, body,
                                                  {"ts_request_sequence_id": sequence_id})
    for case, answer in answers.items():
        print(case, answer["status"], answer["headers"], answer["body_b64"])
    print(save("sequences", answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
