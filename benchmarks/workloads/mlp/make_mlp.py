"""Makes mlp.pt: the MLP 12288 -> 1024 -> 1024 -> 10 (ReLU) as TorchScript, from a fixed seed.

Run as a script (`python make_mlp.py OUT_PATH`) so the process that builds the archives never
imports torch; the same seed and torch version give the same weights."""

import sys
import warnings

import torch

IN_FEATURES = 12288
HIDDEN = 1024
OUT_FEATURES = 10
SEED = 0


def make(path: str) -> None:
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, OUT_FEATURES)).eval()
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit.*; TorchServe needs it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(model), path)


if __name__ == "__main__":
    make(sys.argv[1])
