"""Sleep: a batch costs fixed_ms + per_item_ms x its size, spent sleeping.

A model whose cost is exact and uses no CPU, to study batching and deadlines without compute
noise. The two figures come from `sleep.json` in the model directory (defaults below), so one
handler serves every cost profile. Shared by all servers: no `ts` imports."""

import json
import os
import time

DEFAULT_FIXED_MS = 5.0
DEFAULT_PER_ITEM_MS = 0.5
CONFIG_FILE = "sleep.json"

_cost_ms = None  # (fixed_ms, per_item_ms) once initialized


def _load(context):
    fixed_ms, per_item_ms = DEFAULT_FIXED_MS, DEFAULT_PER_ITEM_MS
    path = os.path.join(context.system_properties["model_dir"], CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as config_file:
            config = json.load(config_file)
        fixed_ms = float(config.get("fixed_ms", fixed_ms))
        per_item_ms = float(config.get("per_item_ms", per_item_ms))
    if fixed_ms < 0 or per_item_ms < 0:
        raise ValueError(f"{path}: fixed_ms and per_item_ms must be >= 0")
    return fixed_ms, per_item_ms


def handle(data, context):
    global _cost_ms
    if _cost_ms is None:  # at init (data is None), or lazily if a server skipped that call
        _cost_ms = _load(context)
    if data is None:
        return None
    fixed_ms, per_item_ms = _cost_ms
    time.sleep((fixed_ms + per_item_ms * len(data)) / 1000.0)
    return [b"ok"] * len(data)
