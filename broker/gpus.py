"""Counting GPUs without importing torch, and the round robin that gives each worker its gpu_id.

The broker must stay light, so it never asks CUDA: it reads CUDA_VISIBLE_DEVICES when set
(the devices a process may use), else counts the /dev/nvidiaN device nodes.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

_DEVICE_NODE = re.compile(r"^nvidia\d+$")


def count_visible_gpus(environ: Mapping[str, str], dev_dir: str = "/dev") -> int:
    """How many GPUs a process started with this environment may use."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        count = 0
        for entry in visible.split(","):
            entry = entry.strip()
            # CUDA stops at the first invalid entry ("-1", empty): what follows is ignored.
            if not entry or entry.startswith("-"):
                break
            count += 1
        return count
    try:
        return sum(1 for name in os.listdir(dev_dir) if _DEVICE_NODE.match(name))
    except OSError:
        return 0


class GpuAssigner:
    """Hands out gpu_ids round robin, as TorchServe does.

    Models without their own device list share one counter over the server's GPUs; a model
    with `device_ids` cycles through its own list. With no GPU every worker gets None (CPU).
    """

    def __init__(self, gpu_count: int) -> None:
        self.gpu_count = gpu_count
        self._shared_next = 0
        self._per_model_next: dict[str, int] = {}

    def next_gpu(self, model_key: str, device_ids: tuple[int, ...] | None) -> int | None:
        if device_ids:
            index = self._per_model_next.get(model_key, 0)
            self._per_model_next[model_key] = index + 1
            return device_ids[index % len(device_ids)]
        if self.gpu_count <= 0:
            return None
        gpu_id = self._shared_next % self.gpu_count
        self._shared_next += 1
        return gpu_id
