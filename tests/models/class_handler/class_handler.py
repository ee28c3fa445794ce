"""A handler class: initialize(context) once, then handle(data, context) per batch."""


class CountingHandler:
    def __init__(self):
        self.initialized = False
        self.model_name = None
        self.batches = 0

    def initialize(self, context):
        self.initialized = True
        self.model_name = context.model_name
        self.batch_size = context.system_properties["batch_size"]

    def handle(self, data, context):
        self.batches += 1
        return [
            {
                "initialized": self.initialized,
                "model_name": self.model_name,
                "batch_size": self.batch_size,
                "batches": self.batches,
                "request_id": context.get_request_id(index),
            }
            for index in range(len(data))
        ]
