"""pytorch/serve's examples/custom_metrics/mnist_handler.py (commit 62c4d6a1), without torch.

Every call of TorchServe's custom metrics API is the example's, word for word, in the same
methods: add_metric_to_cache, add_metric, get_metric + add_or_update, add_size, add_time with
a Dimension, add_counter, add_percent as a histogram. What changed is only what needs torch
and torchvision: the class derives from nothing instead of ImageClassifier, `preprocess`
passes each body (a JSON list of numbers) through instead of decoding an image, `postprocess`
takes the argmax in Python, and `handle` records HandlerTime as TorchServe's BaseHandler does.
metrics.yaml next to it is the example's, unchanged (it declares RequestBatchSize, which
`get_metric` needs).
"""

import time

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes


class MNISTDigitClassifier:
    def initialize(self, context):
        self.context = context
        metrics = context.metrics

        # "add_metric_to_cache" will only register/override(if already present) a metric
        # object in the metric cache and will not emit it
        self.inf_request_count = metrics.add_metric_to_cache(
            metric_name="InferenceRequestCount",
            unit="count",
            dimension_names=[],
            metric_type=MetricTypes.COUNTER,
        )
        metrics.add_metric_to_cache(
            metric_name="PreprocessCallCount",
            unit="count",
            dimension_names=["ModelName"],
            metric_type=MetricTypes.COUNTER,
        )

        # "add_metric" will register the metric if not already present in metric cache,
        # include the "ModelName" and "Level" dimensions by default and emit it
        metrics.add_metric(
            name="InitializeCallCount",
            value=1,
            unit="count",
            metric_type=MetricTypes.COUNTER,
        )

    def preprocess(self, data):
        preprocess_start = time.time()

        metrics = self.context.metrics

        # "add_or_update" will emit the metric
        self.inf_request_count.add_or_update(value=1, dimension_values=[])

        # "get_metric" will fetch the corresponding metric from metric cache if present
        preprocess_call_count_metric = metrics.get_metric(
            metric_name="PreprocessCallCount", metric_type=MetricTypes.COUNTER
        )
        preprocess_call_count_metric.add_or_update(
            value=1, dimension_values=[self.context.model_name]
        )

        request_batch_size_metric = metrics.get_metric(
            metric_name="RequestBatchSize", metric_type=MetricTypes.GAUGE
        )
        request_batch_size_metric.add_or_update(
            value=len(data), dimension_values=[self.context.model_name]
        )

        input = data[0].get("body")

        # "add_size" will register the metric if not already present in metric cache,
        # include the "ModelName" and "Level" dimensions by default and emit it
        metrics.add_size(
            name="SizeOfImage", value=len(input) / 1024, idx=None, unit="kB"
        )

        preprocessed_image = [row.get("body") for row in data]

        preprocess_stop = time.time()

        # "add_time" will register the metric if not already present in metric cache,
        # include the "ModelName" and "Level" dimensions by default and emit it
        # Note: "HandlerMethodTime" is not defined in "metrics.yaml" and will be auto-detected
        metrics.add_time(
            name="HandlerMethodTime",
            value=(preprocess_stop - preprocess_start) * 1000,
            idx=None,
            unit="ms",
            dimensions=[Dimension(name="MethodName", value="preprocess")],
            metric_type=MetricTypes.GAUGE,
        )

        return preprocessed_image

    def inference(self, data):
        return data

    def postprocess(self, data):
        # "add_counter" will register the metric if not already present in metric cache,
        # include the "ModelName" and "Level" dimensions by default and emit it
        self.context.metrics.add_counter(
            name="PostprocessCallCount", value=1, idx=None, dimensions=[]
        )
        # "add_percent" will register the metric if not already present in metric cache,
        # include the "ModelName" and "Level" dimensions by default and emit it
        # Note: "ExamplePercentMetric" is not defined in "metrics.yaml" and will be
        # auto-detected
        self.context.metrics.add_percent(
            name="ExamplePercentMetric",
            value=50,
            idx=None,
            dimensions=[],
            metric_type=MetricTypes.HISTOGRAM,
        )

        return [max(range(len(row)), key=row.__getitem__) for row in data]

    def handle(self, data, context):
        start_time = time.time()
        self.context = context
        output = self.postprocess(self.inference(self.preprocess(data)))
        stop_time = time.time()
        context.metrics.add_time(
            "HandlerTime", round((stop_time - start_time) * 1000, 2), None, "ms"
        )
        return output
