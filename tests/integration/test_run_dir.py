"""The run directory is private and the server's identity is its lock (finding 4 of the fault
probe): a directory another user owns or others may write into is refused, the log is never
opened through a link, and `zerobatch stop` signals the process holding the lock, whatever a
pid file says."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.support.servers import TEST_MODELS, cli, free_port, isolated_flags
from zerobatch import run_dir

NOBODY_UID = 65534


def start_args(directory: str, *flags: str) -> list[str]:
    return ["start", "--run-dir", directory, "--http-port", str(free_port()),
            "--client-address", f"tcp://127.0.0.1:{free_port()}", "--frontends", "0",
            "--startup-timeout", "60", "--model-store", TEST_MODELS, "--models", "echo=echo",
            *isolated_flags(), *flags]


@pytest.fixture
def bystander():
    """An unrelated process, the kind a forged pid file would name."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_run_directory_another_user_owns_is_refused(tmp_path):
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY_UID, NOBODY_UID)
    result = cli(*start_args(str(directory)))
    assert result.returncode == 2
    assert f"belongs to user {NOBODY_UID}, not to you" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert os.listdir(directory) == []


def test_a_run_directory_others_may_write_into_is_refused(tmp_path):
    directory = tmp_path / "open"
    directory.mkdir()
    os.chmod(directory, 0o777)
    result = cli(*start_args(str(directory)))
    assert result.returncode == 2
    assert "is writable by others (mode 777)" in result.stderr
    assert os.listdir(directory) == []


def test_a_run_directory_that_is_a_link_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    result = cli(*start_args(str(link)))
    assert result.returncode == 2
    assert "is a symbolic link" in result.stderr


def test_the_log_is_never_opened_through_a_link(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    chosen = tmp_path / "chosen-by-someone-else"
    chosen.write_text("untouched\n")
    (directory / "zerobatch.log").symlink_to(chosen)
    result = cli(*start_args(str(directory)))
    assert result.returncode == 2
    assert "a symbolic link is refused" in result.stderr
    assert chosen.read_text() == "untouched\n"


def test_stop_signals_the_lock_holder_not_the_pid_a_file_names(tmp_path, bystander):
    directory = str(tmp_path / "run")
    result = cli(*start_args(directory))
    assert result.returncode == 0, result.stderr
    try:
        keeper = run_dir.lock_holder(directory, run_dir.KEEPER_LOCK)
        broker = run_dir.lock_holder(directory, run_dir.BROKER_LOCK)
        assert keeper and broker and keeper != broker
        for name in (run_dir.KEEPER_LOCK, run_dir.BROKER_LOCK):
            with open(os.path.join(directory, name), "w") as forged:  # as an attacker would
                forged.write(str(bystander.pid))
        stopped = cli("stop", "--run-dir", directory)
        assert stopped.returncode == 0, stopped.stderr
        assert f"pid {keeper}" in stopped.stdout
        assert bystander.poll() is None  # the process the files named lives on
        assert run_dir.lock_holder(directory, run_dir.KEEPER_LOCK) is None
        assert run_dir.lock_holder(directory, run_dir.BROKER_LOCK) is None
    finally:
        for pid in (run_dir.lock_holder(directory, name)
                    for name in (run_dir.KEEPER_LOCK, run_dir.BROKER_LOCK)):
            if pid:
                os.kill(pid, signal.SIGKILL)


def test_a_stale_pid_file_is_no_server(tmp_path, bystander):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    (directory / run_dir.BROKER_LOCK).write_text(str(bystander.pid))
    result = cli("stop", "--run-dir", str(directory))
    assert result.returncode == 1
    assert "no server is running" in result.stderr
    assert bystander.poll() is None


def test_a_second_server_on_the_same_run_directory_is_refused(tmp_path):
    directory = str(tmp_path / "run")
    assert cli(*start_args(directory)).returncode == 0
    try:
        second = cli(*start_args(directory))
        assert second.returncode == 2
        assert "a server is already running from" in second.stderr
    finally:
        assert cli("stop", "--run-dir", directory).returncode == 0
