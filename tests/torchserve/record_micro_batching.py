"""Record TorchServe 0.12.0's answers for a handler that micro-batches
(`ts.handler_utils.micro_batching`, tests/torchserve/handlers/micro_batching_handler.py).

    TORCHSERVE_BIN=/path/to/venv/bin python -m tests.torchserve.record_micro_batching

writes tests/data/torchserve_answers/micro_batching.json: one request alone, then BATCH sent
at once (TorchServe batches them, up to `batchSize` 8, and the handler cuts each batch into
micro batches of 2). tests/integration/test_micro_batching.py builds the same archive with
`build_archive` and compares zerobatch's answers with these.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from tests.support.torchserve_answers import (
    TORCHSERVE_BIN,
    TorchServe,
    build_scripted_archive,
    save,
)

HANDLER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handlers",
                       "micro_batching_handler.py")
MODEL_NAME = "microdouble"
#: the example's model-config.yaml, with a batch that several micro batches make up
MODEL_CONFIG = """
    batchSize: 8
    maxBatchDelay: 500
    micro_batching:
      micro_batch_size: 2
      parallelism:
        preprocess: 2
        inference: 1
        postprocess: 2
"""
JSON_TYPE = {"content-type": "application/json"}
SINGLE = b'{"x": [1.5, -2]}'
#: case -> body, sent together so that they share batches
BATCH = {f"batch_{index}": json.dumps({"x": [index, index / 4]}).encode()
         for index in range(7)}


def build_archive(export_dir: str, archiver: str) -> str:
    """Pack MODEL_NAME (a TorchScript doubler, HANDLER, MODEL_CONFIG) with the
    torch-model-archiver at `archiver` into export_dir; the archive's file name."""
    import torch

    class Doubler(torch.nn.Module):
        def forward(self, x):
            return x * 2

    return build_scripted_archive(archiver, export_dir, MODEL_NAME, HANDLER, Doubler(),
                                  MODEL_CONFIG)


def main() -> int:
    answers = {}
    path = f"/predictions/{MODEL_NAME}"
    with tempfile.TemporaryDirectory() as store:
        archive = build_archive(store, os.path.join(TORCHSERVE_BIN, "torch-model-archiver"))
        with TorchServe(store, {MODEL_NAME: archive}) as torchserve:
            answers["single"] = torchserve.record("POST", path, SINGLE, JSON_TYPE)
            with ThreadPoolExecutor(len(BATCH)) as pool:
                recorded = pool.map(lambda body: torchserve.record("POST", path, body,
                                                                   JSON_TYPE), BATCH.values())
                answers.update(zip(BATCH, recorded, strict=True))
    for case, answer in answers.items():
        print(case, answer["status"], answer["body_b64"])
    print(save("micro_batching", answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
