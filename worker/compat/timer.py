"""`ts.handler_utils.timer`: the `timed` decorator of TorchServe's handler methods.

When the model's `model-config.yaml` has `handler: {profile: true}`, each call of a decorated
method records a `ts_handler_<method>` time metric (ms) through `self.context.metrics`.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any, Callable


def timed(func: Callable) -> Callable:
    @functools.wraps(func)
    def wrap_func(self: Any, *args: Any, **kwargs: Any) -> Any:
        context = getattr(self, "context", None)
        config = getattr(context, "model_yaml_config", None) or {}
        handler_config = config.get("handler")
        if not (isinstance(handler_config, dict) and handler_config.get("profile")):
            return func(self, *args, **kwargs)
        start_s = time.perf_counter()
        result = func(self, *args, **kwargs)
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
        context.metrics.add_time("ts_handler_" + func.__name__,
                                 (time.perf_counter() - start_s) * 1000)
        return result
    return wrap_func
