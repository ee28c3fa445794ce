"""A BaseHandler subclass with neither explain_handle nor get_insights of its own: an
explanation request has nothing to run."""

from ts.torch_handler.base_handler import BaseHandler


class NoExplainHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True

    def preprocess(self, data):
        return [row.get("data") or row.get("body") for row in data]

    def inference(self, data, *args, **kwargs):
        return [len(value) for value in data]

    def postprocess(self, data):
        return data
