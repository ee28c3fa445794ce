"""`ts.torch_handler.object_detector`: boxes, labels and scores above a threshold.

Images become [0, 1] RGB tensors at their own size (no resize). The batch goes to the model
stacked when all images have one size, else as a list of tensors (torchvision's detection
models take either). The model returns one dict per image with "boxes" [M, 4] (x1, y1, x2,
y2), "labels" [M] and "scores" [M]. Each image's answer is a list of
{label: [x1, y1, x2, y2], "score": s} for the detections scoring at least `threshold` (0.5, or
`handler: {threshold: T}` in `model-config.yaml`); labels come from `index_to_name.json`
(TorchServe's `{"object_type_names": [...]}` form works too), else the class index as a
string.
"""

from __future__ import annotations

from typing import Any

import torch

from zerobatch.worker.compat.util import map_class_to_label
from zerobatch.worker.handlers.transforms import Compose, ConvertRGB, ToTensor
from zerobatch.worker.handlers.vision_handler import VisionHandler

DEFAULT_THRESHOLD = 0.5


class ObjectDetector(VisionHandler):
    image_processing = Compose([ConvertRGB(), ToTensor()])
    threshold = DEFAULT_THRESHOLD

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        handler_config = self.model_yaml_config.get("handler")
        if isinstance(handler_config, dict) and handler_config.get("threshold") is not None:
            self.threshold = float(handler_config["threshold"])

    def stack(self, images: list[torch.Tensor]) -> Any:
        if len({tuple(image.shape) for image in images}) == 1:
            return super().stack(images)
        return [image.to(self.device) for image in images]

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, torch.Tensor):
            return super().inference(data, *args, **kwargs)
        with torch.inference_mode():
            return self.model(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list:
        result = []
        for row in data:
            keep = row["scores"] >= self.threshold
            boxes, labels, scores = (row[key][keep].tolist() for key in ("boxes", "labels",
                                                                         "scores"))
            detections = []
            for label, box, score in zip(labels, boxes, scores, strict=True):
                detection = map_class_to_label([[box]], self.mapping, [[label]])[0]
                detection["score"] = score
                detections.append(detection)
            result.append(detections)
        return result
