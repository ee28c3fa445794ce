"""What the serving processes load: the broker and the front end never import torch."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_broker_and_frontend_modules_do_not_load_torch_or_numpy(tmp_path):
    code = ("import sys, zerobatch.broker.__main__, zerobatch.broker.core, "
            "zerobatch.broker.loop, zerobatch.broker.supervisor, zerobatch.api.http_app, "
            "zerobatch.api.client, zerobatch.api.frontend, zerobatch.api.grpc_server, "
            "zerobatch.api.grpc_service; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
