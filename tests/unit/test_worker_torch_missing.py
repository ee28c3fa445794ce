"""A handler that needs torch where torch is not installed fails to load with one line.

`sys.modules["torch"] = None` makes every `import torch` raise ModuleNotFoundError, as in a
Python without torch; the zerobatch modules that import torch are dropped from sys.modules for
the test, so they import again (and fail) instead of answering from the cache.
"""

import sys

import pytest

from tests.models import model_path, write_model_dir
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError
from zerobatch.worker.__main__ import preload
from zerobatch.worker.service import Service

NO_TORCH = ("model needs_torch: its handler needs torch, which is not installed in the "
            "Python that runs the workers; install the build for your hardware: "
            "https://pytorch.org/get-started/locally/")


@pytest.fixture
def without_torch(monkeypatch):
    cached = [name for name in sys.modules
              if name == "ts" or name.startswith("ts.") or name == "zerobatch.worker.base_handler"
              or name.startswith("zerobatch.worker.handlers.")]
    for name in cached:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)


def load_error(path):
    with pytest.raises(ConfigError) as failure:
        Service.load(ModelConfig("needs_torch", path))
    assert failure.value.__cause__ is None  # nothing for the log to print a traceback of
    return str(failure.value)


def test_a_handler_file_that_imports_torch(without_torch, tmp_path):
    path = write_model_dir(str(tmp_path / "m"), """
        import torch

        def handle(data, context):
            return data
        """)
    assert load_error(path) == NO_TORCH


def test_a_torchserve_base_handler_subclass(without_torch, tmp_path):
    path = write_model_dir(str(tmp_path / "m"), """
        from ts.torch_handler.base_handler import BaseHandler

        class MyHandler(BaseHandler):
            pass
        """)
    assert load_error(path) == NO_TORCH


def test_a_default_handler_by_name(without_torch, tmp_path):
    path = write_model_dir(str(tmp_path / "m"), "", file_name="unused.py",
                           handler="image_classifier")
    assert load_error(path) == NO_TORCH


def test_torch_imported_when_the_handler_initializes(without_torch, tmp_path):
    path = write_model_dir(str(tmp_path / "m"), """
        def handle(data, context):
            import torch
            return data
        """)
    assert load_error(path) == NO_TORCH


def test_another_missing_module_keeps_its_own_message(without_torch, tmp_path):
    path = write_model_dir(str(tmp_path / "m"), """
        import no_such_module_zb

        def handle(data, context):
            return data
        """)
    with pytest.raises(ConfigError, match="ModuleNotFoundError: No module named "
                                          "'no_such_module_zb'") as failure:
        Service.load(ModelConfig("needs_torch", path))
    assert "install the build" not in str(failure.value)


def test_a_handler_without_torch_still_loads(without_torch):
    service = Service.load(ModelConfig("echo", model_path("echo")))
    assert service.context.model_name == "echo"


def test_preload_skips_a_module_that_is_not_installed(without_torch, capsys):
    preload(["torch", "no_such_module_zb"])
    assert capsys.readouterr().err == ""


def test_preload_says_once_why_a_module_failed(monkeypatch, tmp_path, capsys):
    (tmp_path / "zb_broken_preload.py").write_text("raise RuntimeError('half installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "zb_broken_preload", raising=False)
    preload(["zb_broken_preload"])
    assert capsys.readouterr().err == ("worker: --preload zb_broken_preload: RuntimeError: "
                                       "half installed\n")
