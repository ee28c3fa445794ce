"""Record TorchServe 0.12.0's answers for sequence batching (a stateful handler shaped as
pytorch/serve's examples/stateful: tests/torchserve/handlers/stateful_handler.py).

    TORCHSERVE_BIN=/path/to/venv/bin python -m tests.torchserve.record_sequences

writes tests/data/torchserve_answers/sequences.json: two sequences named by the client
(`ts_request_sequence_id: seq_0` and `seq_1`), their requests sent one after the other,
alternating (EXCHANGE), then one request that names no sequence (TorchServe starts one under
an id of its own). tests/integration/test_sequence_batching.py builds the same archive with
`build_archive` and compares zerobatch's answers with these: status, body, and whether the
sequence id comes back as a response header.
"""

from __future__ import annotations

import os
import sys
import tempfile

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
    with tempfile.TemporaryDirectory() as store:
        archive = build_archive(store, os.path.join(TORCHSERVE_BIN, "torch-model-archiver"))
        with TorchServe(store, {MODEL_NAME: archive}) as torchserve:
            for case, (sequence_id, body) in EXCHANGE.items():
                answers[case] = torchserve.record("POST", path, body,
                                                  {"ts_request_sequence_id": sequence_id})
            answers[UNNAMED[0]] = torchserve.record("POST", path, UNNAMED[1])
    for case, answer in answers.items():
        print(case, answer["status"], answer["headers"], answer["body_b64"])
    print(save("sequences", answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
