"""TorchServe-style handler for the demo digits CNN (8x8 images, values 0..16).

Each request's body is either

- an image (PNG, JPEG, anything Pillow opens) of any size: converted to grayscale, inverted
  when its background is light (dark ink on paper), cropped to the digit, padded to a
  square, averaged down to 8x8 and scaled to 0..16 like the dataset; or
- JSON: an 8x8 nested list of numbers (a flat list of 64 also works), or {"data": [[...]]}.

The whole batch runs as one forward pass. Each answer is a JSON object of all 10 class
probabilities, label -> probability, sorted by probability, most likely first. A request
whose body cannot be read gets status 400 and {"error": "..."}; the rest of its batch runs.
"""

import io
import json

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from zerobatch.worker.base_handler import BaseHandler

SIDE = 8
MAX_PIXEL = 16.0
LIGHT_BACKGROUND = 127.5
INK_THRESHOLD = 64  # of 255: darker pixels are background when finding the digit


def image_to_digit(body):
    """An encoded image as an 8x8 float32 array of ink values 0..16."""
    with Image.open(io.BytesIO(body)) as image:
        gray = image.convert("L")
    pixels = np.asarray(gray, dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > LIGHT_BACKGROUND:
        gray = ImageOps.invert(gray)
    # Like the dataset: the digit's bounding box, centered in a square, averaged to 8x8.
    box = gray.point(lambda v: 255 if v >= INK_THRESHOLD else 0).getbbox()
    if box is not None:
        gray = gray.crop(box)
    side = max(gray.size)
    gray = ImageOps.pad(gray, (side, side), color=0)
    small = gray.resize((SIDE, SIDE), Image.BOX)
    return np.asarray(small, dtype=np.float32) * (MAX_PIXEL / 255.0)


def json_to_digit(value):
    """A JSON value (8x8 or 64 numbers, or {"data": ...}) as an 8x8 float32 array."""
    if isinstance(value, dict):
        value = value.get("data")
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError("expected an 8x8 list of numbers") from None
    if array.size != SIDE * SIDE or array.ndim not in (1, 2):
        raise ValueError(f"expected an 8x8 list of numbers, got shape {list(array.shape)}")
    return array.reshape(SIDE, SIDE)


def body_to_digit(body):
    if isinstance(body, (bytes, bytearray)):
        try:
            return image_to_digit(bytes(body))
        except UnidentifiedImageError:
            try:
                body = json.loads(body)
            except ValueError:
                raise ValueError("the body is neither an image nor JSON") from None
    elif isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            raise ValueError("the text body is not JSON") from None
    return json_to_digit(body)


class DigitsHandler(BaseHandler):
    """Digit probabilities for images or 8x8 arrays, one forward pass per batch."""

    def preprocess(self, digits):
        return torch.from_numpy(np.stack(digits)).unsqueeze(1)

    def postprocess(self, logits):
        probabilities = torch.softmax(logits, dim=1).tolist()
        labels = [self.mapping.get(str(i), str(i)) if self.mapping else str(i)
                  for i in range(len(probabilities[0]) if probabilities else 0)]
        return [dict(sorted(zip(labels, row, strict=True), key=lambda kv: kv[1], reverse=True))
                for row in probabilities]

    def handle(self, data, context):
        self.context = context
        results = [None] * len(data)
        digits, positions = [], []
        for index, row in enumerate(data):
            body = row.get("data")
            if body is None:
                body = row.get("body")
            try:
                if body is None:  # a form without a "data" field
                    raise ValueError(f"no input: send it as the body or as the form field "
                                     f"'data' (got the fields {sorted(row)})")
                digits.append(body_to_digit(body))
                positions.append(index)
            except (ValueError, OSError, Image.DecompressionBombError) as exc:
                context.set_response_status(400, "Bad Request", index)
                results[index] = {"error": str(exc)}
        if digits:
            answers = self.postprocess(self.inference(self.preprocess(digits)))
            for index, answer in zip(positions, answers, strict=True):
                results[index] = answer
        return results
