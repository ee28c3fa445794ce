"""The image transforms of TorchServe's vision handlers, without torchvision.

Each is a callable with torchvision's name and arithmetic: `Resize(256)` matches the shorter
side (Pillow bilinear, as torchvision does on PIL images), `CenterCrop(224)` crops the middle
(zero padding when the image is smaller), `ToTensor()` gives a CHW float tensor in [0, 1],
`Normalize(mean, std)` standardizes channels. `ConvertRGB()` is ours: the ImageNet pipelines
need three channels, and TorchServe fails on grayscale or RGBA uploads where we convert.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, value: Any) -> Any:
        for transform in self.transforms:
            value = transform(value)
        return value


class ConvertRGB:
    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")


class Resize:
    """An int size: the shorter side becomes `size`, the aspect ratio kept; (h, w): exact."""

    def __init__(self, size: int | tuple[int, int],
                 interpolation: int = Image.BILINEAR) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if isinstance(self.size, int):
            short, long = sorted((width, height))
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            new_h, new_w = self.size
        if (new_w, new_h) == (width, height):
            return image
        return image.resize((new_w, new_h), self.interpolation)


class CenterCrop:
    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        crop_h, crop_w = self.size
        width, height = image.size
        if crop_w > width or crop_h > height:  # pad with zeros first, as torchvision does
            padded = Image.new(image.mode, (max(width, crop_w), max(height, crop_h)))
            padded.paste(image, ((crop_w - width) // 2 if crop_w > width else 0,
                                 (crop_h - height) // 2 if crop_h > height else 0))
            image = padded
            width, height = image.size
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        return image.crop((left, top, left + crop_w, top + crop_h))


class ToTensor:
    """A PIL image as a float32 CHW tensor; 8-bit images scaled to [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(image))  # a writable copy of the pixels
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(-1)
        tensor = tensor.permute(2, 0, 1).contiguous()
        if tensor.dtype == torch.uint8:
            return tensor.to(torch.float32).div_(255)
        return tensor.to(torch.float32)


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_processing(resize: int = 256, crop: int = 224) -> Compose:
    """TorchServe's classifier and segmenter pipeline: resize, center crop, normalize."""
    return Compose([ConvertRGB(), Resize(resize), CenterCrop(crop), ToTensor(),
                    Normalize(IMAGENET_MEAN, IMAGENET_STD)])
