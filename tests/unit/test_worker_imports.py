"""Layering: the worker imports only `zerobatch`, and a torch-free handler never loads torch."""

import ast
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER_DIR = os.path.join(REPO_ROOT, "worker")


def imported_modules(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_worker_does_not_import_broker_or_api():
    offenders = []
    for root, _, files in os.walk(WORKER_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                offenders += [f"{path}: {module}" for module in imported_modules(path)
                              if module.split(".")[0] in ("broker", "api")]
    assert offenders == []


def test_an_echo_worker_does_not_import_torch():
    code = (
        "import sys\n"
        "import worker.__main__, worker.loop\n"
        "from worker.service import Service\n"
        "from zerobatch.config import ModelConfig\n"
        "from tests.models import model_path\n"
        "service = Service.load(ModelConfig('echo', model_path('echo')))\n"
        "service.run_batch(1, [(b'\\x93\\xa4text\\xc0\\xc0', b'x')])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
