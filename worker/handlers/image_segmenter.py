"""`ts.torch_handler.image_segmenter`: a class map per image.

Preprocessing is the classifier's (resize 256, center crop 224, normalize). The model returns
[N, K, H, W] scores, as a tensor or under "out" (torchvision's segmentation models). As in
TorchServe, each image's answer is an H x W nested list of [class index, probability] pairs
(the class as a float), the most likely class of each pixel.
"""

from __future__ import annotations

from typing import Any

import torch

from zerobatch.worker.handlers.transforms import imagenet_processing
from zerobatch.worker.handlers.vision_handler import VisionHandler


class ImageSegmenter(VisionHandler):
    image_processing = imagenet_processing()

    def postprocess(self, data: Any) -> list:
        if isinstance(data, dict):
            data = data["out"]
        elif isinstance(data, (tuple, list)):
            data = data[0]
        best = torch.max(torch.softmax(data, dim=1), dim=1)
        return torch.stack([best.indices.to(best.values.dtype), best.values], dim=3).tolist()
