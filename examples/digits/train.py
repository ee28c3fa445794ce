"""Train the demo digits CNN and save it as TorchScript.

    python -m examples.digits.train --out examples/digits/model [--force]

The data is scikit-learn's bundled digits set (1797 8x8 images, values 0..16; no download).
80 % trains, a stratified 20 % is held out; seeds are fixed, so a run is reproducible and
takes a few seconds of CPU. The model takes raw 0..16 values, shaped (N, 1, 8, 8) or
(N, 8, 8), and returns 10 logits. When `digits_cnn.pt` already exists and is newer than this
file the training is skipped (the saved model is evaluated instead); `--force` retrains.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch
from torch import nn

MODEL_FILE = "digits_cnn.pt"
SEED = 0
TEST_FRACTION = 0.2
EPOCHS = 30
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
MAX_PIXEL = 16.0  # the dataset's pixel values run from 0 to 16


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 pool and two linear layers: about 35 k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x / 16.0))


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, held-out images, train labels, held-out labels); images (N, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32)
    return tuple(train_test_split(images, digits.target, test_size=TEST_FRACTION,
                                  random_state=SEED, stratify=digits.target))


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    return float((predicted == labels).mean())


def train_model(train_x: np.ndarray, train_y: np.ndarray) -> nn.Module:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.from_numpy(train_x)
    y = torch.from_numpy(train_y).long()
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), BATCH_SIZE):
            index = order[start:start + BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()


def is_up_to_date(model_path: str) -> bool:
    return (os.path.isfile(model_path)
            and os.path.getmtime(model_path) > os.path.getmtime(os.path.abspath(__file__)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.digits.train",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "model"),
                        help="the model directory to write digits_cnn.pt into")
    parser.add_argument("--force", action="store_true", help="retrain even when up to date")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, MODEL_FILE)
    train_x, test_x, train_y, test_y = load_split()
    threads = torch.get_num_threads()
    # One thread: the model is tiny, and on a busy machine OpenMP threads spinning against
    # other processes made training 30 times slower. It also keeps the result reproducible.
    torch.set_num_threads(1)
    try:
        return _train_or_check(args.force, model_path, train_x, test_x, train_y, test_y)
    finally:
        torch.set_num_threads(threads)


def _train_or_check(force: bool, model_path: str, train_x: np.ndarray, test_x: np.ndarray,
                    train_y: np.ndarray, test_y: np.ndarray) -> int:
    with warnings.catch_warnings():
        # torch >= 2.10 deprecates TorchScript; TorchServe archives (and this demo) still use it.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        if is_up_to_date(model_path) and not force:
            model = torch.jit.load(model_path)
            print(f"{model_path} is up to date (--force retrains); "
                  f"held-out accuracy {accuracy(model, test_x, test_y):.4f}")
            return 0
        start_s = time.perf_counter()
        model = torch.jit.script(train_model(train_x, train_y))
        torch.jit.save(model, model_path)
    print(f"trained in {time.perf_counter() - start_s:.1f} s on {len(train_x)} images; "
          f"held-out accuracy {accuracy(model, test_x, test_y):.4f} on {len(test_x)}; "
          f"saved {model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
