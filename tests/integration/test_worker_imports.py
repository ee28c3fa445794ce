"""What a worker process loads: a worker whose handler needs no torch never imports it."""

import subprocess
import sys

import pytest

from tests.models import model_path

pytestmark = pytest.mark.integration


def test_an_echo_worker_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "import zerobatch.worker.__main__, zerobatch.worker.loop\n"
        "from zerobatch.worker.service import Service\n"
        "from zerobatch.config import ModelConfig\n"
        f"service = Service.load(ModelConfig('echo', {model_path('echo')!r}))\n"
        "service.run_batch(1, [(b'\\x93\\xa4text\\xc0\\xc0', b'x')])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
