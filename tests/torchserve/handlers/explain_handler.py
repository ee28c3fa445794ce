"""A BaseHandler subclass with explanations of its own (no Captum): a prediction answers each
body's length, an explanation each character's share of it and the first request's `url_path`
(under KServe's envelope one request carries every instance)."""

from ts.torch_handler.base_handler import BaseHandler


def _text(row):
    value = row.get("data") or row.get("body") or b""
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    return value if isinstance(value, str) else str(value)


class ExplainHandler(BaseHandler):
    def initialize(self, context):
        self.context = context
        self.initialized = True

    def preprocess(self, data):
        return [_text(row) for row in data]

    def inference(self, data, *args, **kwargs):
        return [len(text) for text in data]

    def postprocess(self, data):
        return [{"length": length} for length in data]

    def explain_handle(self, data_preprocess, raw_data):
        url_path = self.context.get_request_header(0, "url_path")
        return [{"shares": [round(1 / len(text), 4)] * len(text) if text else [],
                 "url_path": url_path}
                for text in data_preprocess]
