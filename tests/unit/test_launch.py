"""zerobatch.launch: the argv that starts a child without the caller's directory on sys.path.

Unit tests start no process: they check the argv's shape for each Python version, and run the
3.10 bootstrap's code here with runpy stubbed out. tests/integration/test_hostile_cwd.py runs
both argvs for real from a directory that shadows the package.
"""

from __future__ import annotations

import runpy
import sys
import types

import pytest

from zerobatch import launch

PYTHON = "/opt/venv/bin/python"


def on_python(monkeypatch, version: tuple[int, int, int]) -> None:
    """Make launch see this interpreter version and executable."""
    monkeypatch.setattr(launch, "sys", types.SimpleNamespace(version_info=version,
                                                             executable=PYTHON))


@pytest.mark.parametrize("version", [(3, 11, 0), (3, 13, 1)])
def test_from_python_3_11_on_a_child_runs_with_safe_path(monkeypatch, version):
    on_python(monkeypatch, version)
    assert launch.module_argv("zerobatch.worker", "--config", "{}") == [
        PYTHON, "-P", "-m", "zerobatch.worker", "--config", "{}"]


def test_python_3_10_which_has_no_safe_path_flag_runs_the_bootstrap(monkeypatch):
    on_python(monkeypatch, (3, 10, 13))
    argv = launch.module_argv("zerobatch.broker", "--config", "{}")
    assert argv == launch.bootstrap_argv("zerobatch.broker", "--config", "{}")
    assert argv[:2] == [PYTHON, "-c"]
    assert argv[3:] == ["zerobatch.broker", "--config", "{}"]
    assert "-P" not in argv and "-m" not in argv  # 3.10 rejects -P; -m would add the cwd
    compile(argv[2], "<bootstrap>", "exec")


def run_bootstrap(monkeypatch, path: list[str], argv: list[str]) -> list[tuple]:
    """Execute the bootstrap's code in this process, as `python -c CODE *argv[1:]` would, with
    this sys.path; what runpy.run_module was called with, and sys.argv and sys.path then."""
    calls = []

    def run_module(module, **kwargs):
        calls.append((module, kwargs, list(sys.argv), list(sys.path)))

    monkeypatch.setattr(runpy, "run_module", run_module)
    monkeypatch.setattr(sys, "path", list(path))
    monkeypatch.setattr(sys, "argv", list(argv))
    code = launch.bootstrap_argv("unused")[2]
    exec(compile(code, "<bootstrap>", "exec"), {})
    return calls


def test_the_bootstrap_drops_the_current_directory_and_runs_the_module_as_main(monkeypatch):
    calls = run_bootstrap(monkeypatch, ["", "/usr/lib/python3.10", "/opt/venv/site-packages"],
                          ["-c", "zerobatch.worker", "--config", "{}"])
    assert calls == [("zerobatch.worker", {"run_name": "__main__", "alter_sys": True},
                      ["-c", "--config", "{}"],
                      ["/usr/lib/python3.10", "/opt/venv/site-packages"])]


def test_the_bootstrap_keeps_a_path_that_has_no_current_directory_entry(monkeypatch):
    # `python -I -c` or PYTHONSAFEPATH=1 on 3.11+: the first entry is a real one, kept.
    calls = run_bootstrap(monkeypatch, ["/usr/lib/python311.zip", "/usr/lib/python3.11"],
                          ["-c", "zerobatch.api.frontend"])
    assert calls == [("zerobatch.api.frontend", {"run_name": "__main__", "alter_sys": True},
                      ["-c"], ["/usr/lib/python311.zip", "/usr/lib/python3.11"])]
