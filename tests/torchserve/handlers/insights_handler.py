"""A BaseHandler subclass that computes insights without Captum and keeps BaseHandler's own
explain_handle, which reads the first row's "data" (or "body") and "target"."""

from ts.torch_handler.base_handler import BaseHandler


class InsightsHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True

    def preprocess(self, data):
        return [row.get("data") or row.get("body") for row in data]

    def inference(self, data, *args, **kwargs):
        return ["predicted" for _ in data]

    def postprocess(self, data):
        return data

    def get_insights(self, tensor_data, inputs, target=0):
        if isinstance(inputs, (bytes, bytearray)):
            inputs = inputs.decode("utf-8")
        if isinstance(target, (bytes, bytearray)):
            target = target.decode("utf-8")
        return [{"inputs": inputs, "target": target, "rows": len(tensor_data)}]
