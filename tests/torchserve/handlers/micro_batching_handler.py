"""A TorchServe handler that micro-batches, shaped as pytorch/serve's
examples/micro_batching handler is: `self.handle` replaced by a MicroBatching in `__init__`,
its micro batch size and threads per step read from the `micro_batching` block of
model-config.yaml in `initialize`. The example subclasses ImageClassifier, which in TorchServe
needs torchvision; this one subclasses BaseHandler over a TorchScript model that doubles its
input, so that TorchServe runs it where torchvision is not installed.

A request is JSON {"x": [a, b]}; its answer {"doubled": [2a, 2b]}.
"""

import json
import logging

import torch
from ts.handler_utils.micro_batching import MicroBatching
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)


class MicroBatchingDoubler(BaseHandler):
    def __init__(self):
        super().__init__()
        self.handle = MicroBatching(self)

    def initialize(self, ctx):
        super().initialize(ctx)
        settings = ctx.model_yaml_config.get("micro_batching", {})
        if settings.get("parallelism"):
            logger.info("micro batching threads per step: %s", settings["parallelism"])
            self.handle.parallelism = settings["parallelism"]
        self.handle.micro_batch_size = settings.get("micro_batch_size", 1)

    def preprocess(self, data):
        rows = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            rows.append(body["x"])
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, output):
        return [{"doubled": values} for values in output.tolist()]
