"""`ts.torch_handler.image_classifier`: the top-k classes of each image, with their labels.

Preprocessing is TorchServe's ImageNet pipeline (resize 256, center crop 224, normalize; images
converted to RGB first). The answer for each image is one {label: probability} dict of the
`topk` most likely classes, most likely first; labels come from `index_to_name.json`, else
the class index as a string. `topk` is 5, or `handler: {topk: N}` in `model-config.yaml`, and
never more than the model's number of classes (TorchServe fails there).
"""

from __future__ import annotations

from typing import Any

import torch

from zerobatch.worker.compat.util import map_class_to_label
from zerobatch.worker.handlers.transforms import imagenet_processing
from zerobatch.worker.handlers.vision_handler import VisionHandler

DEFAULT_TOPK = 5


class ImageClassifier(VisionHandler):
    topk = DEFAULT_TOPK
    image_processing = imagenet_processing()

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        handler_config = self.model_yaml_config.get("handler")
        if isinstance(handler_config, dict) and handler_config.get("topk") is not None:
            self.set_max_result_classes(int(handler_config["topk"]))

    def set_max_result_classes(self, topk: int) -> None:
        self.topk = topk

    def get_max_result_classes(self) -> int:
        return self.topk

    def postprocess(self, data: Any) -> list:
        probabilities = torch.softmax(data, dim=1)
        probs, classes = torch.topk(probabilities, min(self.topk, probabilities.shape[1]), dim=1)
        return map_class_to_label(probs.tolist(), self.mapping, classes.tolist())
