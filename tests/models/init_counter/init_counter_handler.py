"""Records each initialization (the worker's pid, appended to the file $ZB_INIT_LOG names),
takes $ZB_INIT_SLEEP_S seconds to load, then answers each request with its worker's pid after
sleeping the largest {"sleep_ms": N} of the batch: tests count `initialize` calls per worker
and see which worker served a request."""

import os
import time


def _initialize() -> None:
    log = os.environ.get("ZB_INIT_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("ZB_INIT_SLEEP_S", "0")))


def _sleep_ms(body) -> float:
    if isinstance(body, dict) and isinstance(body.get("sleep_ms"), (int, float)):
        return max(0.0, float(body["sleep_ms"]))
    return 0.0


def handle(data, context):
    if data is None:  # the load call: TorchServe's initialization of a function handler
        _initialize()
        return None
    time.sleep(max(_sleep_ms(row.get("body")) for row in data) / 1000.0)
    return [{"pid": os.getpid()} for _ in data]
