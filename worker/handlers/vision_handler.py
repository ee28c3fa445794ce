"""`ts.torch_handler.vision_handler`: images in, a batch tensor out.

Each request's image is its body (or `data`): raw bytes, base64 text, a JSON object with the
base64 under "data", or a nested list of numbers (taken as the tensor itself, unprocessed).
Images go through `image_processing` (here `ToTensor()`; subclasses set their own) and the
batch is stacked. `limit_max_image_pixels` False in the system properties lifts Pillow's
decompression-bomb limit, as in TorchServe.

An unreadable image fails its batch with an UnreadableImage naming the request; the front
end answers it as TorchServe answers any handler's exception, 503 "Prediction failed" (with
`--zerobatch-answers`, 500 and this text); the worker lives on.

Explanations (`get_insights`) are TorchServe's: Captum's Integrated Gradients of the model's
output for class `target`, from an all-zero baseline to each preprocessed image in 15 steps,
one [C, H, W] nested list of attributions per image. Captum is optional and imported, with
`self.ig` built, at the first explanation rather than in `initialize` (see `insights`).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from zerobatch.worker.base_handler import BaseHandler
from zerobatch.worker.handlers.insights import CaptumAttribution, integrated_gradients
from zerobatch.worker.handlers.transforms import ToTensor


class UnreadableImage(ValueError):
    """A request's image cannot be read, or the batch's images cannot be stacked."""


class VisionHandler(BaseHandler):
    """Base class of the image handlers; usable by itself for models taking raw [0, 1] images."""

    image_processing = ToTensor()
    #: Captum's IntegratedGradients over the model, built when first read
    ig = CaptumAttribution(integrated_gradients)
    #: Integrated Gradients steps of an explanation, TorchServe's number
    insight_steps = 15

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        if not context.system_properties.get("limit_max_image_pixels", True):
            Image.MAX_IMAGE_PIXELS = None

    def preprocess(self, data: list) -> Any:
        return self.stack([self.read_image(index, row) for index, row in enumerate(data)])

    def stack(self, images: list[torch.Tensor]) -> Any:
        """The batch the model is called with: the images stacked into one tensor."""
        try:
            return torch.stack(images).to(self.device)
        except RuntimeError as exc:
            raise UnreadableImage(f"the images of this batch differ in shape after "
                                  f"preprocessing: {exc}") from exc

    def read_image(self, index: int, row: dict) -> torch.Tensor:
        """One request's image as a tensor, through `image_processing`."""
        image = row.get("data") or row.get("body")
        if isinstance(image, dict) and "data" in image:
            image = image["data"]
        if isinstance(image, str):
            try:
                image = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise self._bad_image(index, f"text body is not base64: {exc}") from exc
        if isinstance(image, (bytes, bytearray, memoryview)):
            try:
                with Image.open(io.BytesIO(image)) as opened:
                    opened.load()
                    return self.image_processing(opened)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
                raise self._bad_image(index, f"not an image Pillow can read: {exc}") from exc
        try:
            return torch.as_tensor(image, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise self._bad_image(index, f"expected image bytes, base64 text or a list of "
                                  f"numbers, got {type(image).__name__}") from exc

    def get_insights(self, tensor_data: Any, _inputs: Any = None, target: Any = 0) -> list:
        """The attributions of each image of the batch to the model's output `target`
        (TorchServe's: Integrated Gradients, zero baseline, `insight_steps` steps)."""
        return self.ig.attribute(tensor_data, target=target,
                                 n_steps=self.insight_steps).tolist()

    def _bad_image(self, index: int, why: str) -> UnreadableImage:
        request_id = self.context.get_request_id(index) if self.context is not None else None
        return UnreadableImage(f"request {request_id or index}: {why}")
