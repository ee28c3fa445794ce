"""TorchServe's helper modules, as zerobatch implements them (see `worker.ts_alias`).

- `util`: `ts.utils.util` (PredictionException, load_label_mapping, map_class_to_label, ...);
- `handler_utils`: `ts.handler_utils.utils` (send_intermediate_predict_response);
- `timer`: `ts.handler_utils.timer` (the `timed` decorator);
- `micro_batching`: `ts.handler_utils.micro_batching` (MicroBatching);
- `metrics`: the small `ts.metrics.*` modules (Dimension, MetricTypes, CachingMetric, Metric,
  the MetricsCache* errors);
- `metrics_cache`: `ts.metrics.metric_cache_yaml_impl`, the cache `context.metrics` is.

None of them imports torch at import time.
"""
