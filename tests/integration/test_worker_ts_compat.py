"""The `ts.*` aliases in a fresh process: they load no torch, and ours win over a real
TorchServe installed beside them."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def run_python(code, cwd, extra_path=()):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*extra_path, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-P", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_ts_context_does_not_load_torch(tmp_path):
    result = run_python("import sys\n"
                        "from zerobatch.worker.ts_alias import install_ts_aliases\n"
                        "install_ts_aliases()\n"
                        "from ts.context import Context\n"
                        "from ts.utils.util import PredictionException\n"
                        "from ts.handler_utils.utils import send_intermediate_predict_response\n"
                        "assert 'torch' not in sys.modules, 'torch was imported'\n", tmp_path)
    assert result.returncode == 0, result.stderr


def test_ours_wins_over_an_installed_torchserve(tmp_path):
    fake = tmp_path / "site" / "ts"
    (fake / "torch_handler").mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    (fake / "context.py").write_text("class Context: real = True\n")
    (fake / "torch_handler" / "__init__.py").write_text("")
    result = run_python("import ts.context\n"
                        "assert ts.context.Context.real\n"  # the real one, before install
                        "from zerobatch.worker.ts_alias import install_ts_aliases\n"
                        "install_ts_aliases()\n"
                        "import ts, ts.context, zerobatch.worker.context\n"
                        "assert ts.context is zerobatch.worker.context\n"
                        "assert not hasattr(ts, 'REAL')\n",
                        tmp_path, extra_path=[str(tmp_path / "site")])
    assert result.returncode == 0, result.stderr
