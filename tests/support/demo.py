"""The demo model (examples/digits) for tests: its directory with weights that are up to date."""

from __future__ import annotations

import os
import shutil

from examples.digits import train

DEMO_DIR = os.path.dirname(os.path.abspath(train.__file__))
MODEL_DIR = os.path.join(DEMO_DIR, "model")
SAMPLE = os.path.join(DEMO_DIR, "sample_3.png")


def demo_model_dir(tmp_path_factory) -> str:
    """The committed model directory if its weights are up to date, else a freshly trained
    copy (for a module-scoped fixture: training takes seconds)."""
    if train.is_up_to_date(os.path.join(MODEL_DIR, train.MODEL_FILE)):
        return MODEL_DIR
    copy = str(tmp_path_factory.mktemp("digits") / "model")
    shutil.copytree(MODEL_DIR, copy, ignore=shutil.ignore_patterns(train.MODEL_FILE))
    assert train.main(["--out", copy]) == 0
    return copy
