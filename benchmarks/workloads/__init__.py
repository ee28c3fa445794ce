"""The benchmark workloads: echo (pure overhead), mlp (a TorchScript MLP where batching pays)
and sleep (a fixed plus per-item cost, no CPU), each built into a .mar by the real
torch-model-archiver and served by every server from the same handler file.

- `spec`: the Workload record, the names and the request bodies;
- `archive`: build() and its content-keyed cache;
- `ceiling`: batched_ceiling(), the model's own speed outside any server;
- `handler_host`: importing a handler file and a minimal context, outside any server;
- `echo/`, `mlp/`, `sleep/`: the handler files (no `ts` imports; only mlp's imports torch).
"""

from benchmarks.workloads.archive import build
from benchmarks.workloads.ceiling import batched_ceiling
from benchmarks.workloads.spec import CONTENT_TYPE, NAMES, Workload, payload

__all__ = ["CONTENT_TYPE", "NAMES", "Workload", "batched_ceiling", "build", "payload"]
