"""A stateful handler shaped as pytorch/serve's examples/stateful/sequence_batching handler:
a running sum per sequence id, kept in the handler (a dict here, where the example uses an
LRU dict from the lru-dict package). Each request's body is an integer; the answer is the sum
of its sequence's bodies so far. A request with `ts_request_sequence_end` ends its sequence,
and the handler forgets the sum."""

import logging
from abc import ABC

from ts.context import Context
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)


class StatefulHandler(BaseHandler, ABC):
    def __init__(self):
        super().__init__()
        self.cache = {}
        self.context = None

    def initialize(self, ctx: Context):
        super().initialize(ctx)
        self.context = ctx
        self.initialized = True

    def preprocess(self, data):
        results = []
        for idx, row in enumerate(data):
            sequence_id = self.context.get_sequence_id(idx)
            prev = int(self.cache.get(sequence_id, 0))
            request = row.get("data") or row.get("body")
            if isinstance(request, (bytes, bytearray)):
                request = request.decode("utf-8")
            val = prev + int(request)
            self.cache[sequence_id] = val
            if self.context.get_request_header(idx, self.context.header_key_sequence_end):
                del self.cache[sequence_id]
            results.append(val)
        return results

    def inference(self, data, *args, **kwargs):
        return data

    def postprocess(self, data):
        return data
