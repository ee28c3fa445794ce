"""Render dataset digits as real PNG request bodies for the demo.

    python -m examples.digits.make_samples [--out-dir examples/digits]

Writes `sample_3.png`: the first digit 3 of the held-out split (so the model never trained on
it), drawn dark on white like ink on paper and upscaled from 8x8 to 32x32 (nearest), which is
how the dataset itself was made: its 8x8 values count ink pixels in 4x4 blocks of a 32x32
bitmap. The handler inverts light-background images and averages 4x4 blocks back to 8x8.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

from examples.digits.train import MAX_PIXEL, load_split

SAMPLE_DIGIT = 3
SAMPLE_SIZE_PX = 32


def render(image: np.ndarray, size_px: int = SAMPLE_SIZE_PX) -> Image.Image:
    """An 8x8 array of 0..16 ink values as a dark-on-white grayscale image of size_px."""
    gray = np.rint(255.0 - image * (255.0 / MAX_PIXEL)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").resize((size_px, size_px), Image.NEAREST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.digits.make_samples",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = parser.parse_args(argv)
    _, test_x, _, test_y = load_split()
    index = int(np.flatnonzero(test_y == SAMPLE_DIGIT)[0])
    path = os.path.join(args.out_dir, f"sample_{SAMPLE_DIGIT}.png")
    render(test_x[index]).save(path, format="PNG", optimize=True)
    print(f"wrote {path} (held-out image {index}, digit {SAMPLE_DIGIT})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
