"""The run directory's rules without a server: one per user by default, made private, and
refused when it is not (tests/integration/test_run_dir.py runs them through the CLI)."""

from __future__ import annotations

import os
import stat

import pytest

from zerobatch import run_dir
from zerobatch.config import default_run_dir
from zerobatch.errors import ConfigError


def test_each_user_gets_a_default_run_directory_of_their_own():
    assert default_run_dir(1000) != default_run_dir(1001)
    assert default_run_dir(1000).endswith("-1000")


def test_a_new_run_directory_is_made_private(tmp_path):
    directory = tmp_path / "made" / "run"
    run_dir.make_private(str(directory))
    info = os.lstat(directory)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.geteuid()


def test_an_existing_private_directory_is_kept_as_it_is(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o755)
    run_dir.make_private(str(directory))
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o755


def test_a_group_writable_directory_is_refused(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    os.chmod(directory, 0o770)
    with pytest.raises(ConfigError, match="is writable by others"):
        run_dir.make_private(str(directory))


def test_the_log_is_made_private_and_appended_to(tmp_path):
    fd = run_dir.open_log(str(tmp_path))
    os.write(fd, b"one\n")
    os.close(fd)
    fd = run_dir.open_log(str(tmp_path))
    os.write(fd, b"two\n")
    os.close(fd)
    log = tmp_path / run_dir.LOG_FILE
    assert log.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(os.lstat(log).st_mode) == 0o600


def test_a_lock_nobody_holds_names_no_process(tmp_path):
    (tmp_path / run_dir.BROKER_LOCK).write_text("1\n")  # a pid, but no lock
    assert run_dir.lock_holder(str(tmp_path), run_dir.BROKER_LOCK) is None
    assert run_dir.lock_holder(str(tmp_path), "absent") is None
