"""What a workload is: the names, the record the harness passes around, and the request bodies.

Kept free of torch and of subprocesses so every part of the harness can import it cheaply."""

from __future__ import annotations

import array
import random
from dataclasses import dataclass

NAMES = ("echo", "mlp", "sleep")
CONTENT_TYPE = "application/octet-stream"

#: request body sizes: echo's is small on purpose (pure overhead), mlp's is 12288 float32
ECHO_BODY_BYTES = 100
MLP_IN_FEATURES = 12288
MLP_BODY_BYTES = MLP_IN_FEATURES * 4
SLEEP_BODY_BYTES = 16
PAYLOAD_SEED = 0


@dataclass(frozen=True)
class Workload:
    name: str            # "echo" | "mlp" | "sleep"
    archive: str         # path of the built .mar
    model_dir: str       # the same files unpacked (TorchServe's no-archive layout)
    handler: str         # handler file name inside model_dir
    payload: bytes       # the request body every load generator sends
    content_type: str    # "application/octet-stream"


def payload(name: str) -> bytes:
    """The request body of a workload; the same bytes in every run (fixed seed)."""
    if name == "echo":
        return bytes(i % 256 for i in range(ECHO_BODY_BYTES))
    if name == "mlp":
        rng = random.Random(PAYLOAD_SEED)
        # native float32, which is what the handler reads with torch.frombuffer
        return array.array("f", (rng.random() for _ in range(MLP_IN_FEATURES))).tobytes()
    if name == "sleep":
        return b"s" * SLEEP_BODY_BYTES
    raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(NAMES)}")
