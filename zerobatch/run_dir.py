"""The run directory: private to its user, and the lock that says which process serves from it.

The run directory holds the local sockets (workers and front ends connect to them), the log,
the extracted archives and the lock files. Whoever can write into it can swap a socket for
their own or point the log at a file of their choosing, so it must belong to the user who
serves and be writable by nobody else: `make_private` creates it with mode 0700 or refuses an
existing one that fails that test, with a one-line reason. The log is opened without
following a symbolic link.

Which process serves from a run directory is not read from a pid number in a file, which
anyone could have written and which may name a process that has since exited and whose
number was reused: each server process holds a POSIX write lock on its lock file for its
whole life, and `lock_holder` asks the kernel which process holds it (F_GETLK). `zerobatch
stop` signals that process and nothing else. The pid written inside is for people only.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct

from zerobatch.errors import ConfigError

#: held by the broker process for as long as it serves
BROKER_LOCK = "broker.pid"
#: held by the keeper that restarts a background broker after a crash (broker/keeper.py)
KEEPER_LOCK = "keeper.pid"
LOG_FILE = "zerobatch.log"

#: struct flock on Linux (x86_64 and aarch64): l_type, l_whence (short), l_start, l_len
#: (off_t), l_pid (pid_t), padded to 32 bytes
_FLOCK = struct.Struct("hhqqi4x")


def make_private(run_dir: str) -> None:
    """Create run_dir (mode 0700) if it does not exist; refuse (ConfigError, one line) a path
    that is a symbolic link or not a directory, a directory another user owns, or one that
    others may write into."""
    try:
        os.mkdir(run_dir, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(run_dir), exist_ok=True)
        os.mkdir(run_dir, 0o700)
    info = os.lstat(run_dir)
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"run directory {run_dir} is a symbolic link; give a real directory "
                          "with --run-dir")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"run directory {run_dir} is not a directory; give another with "
                          "--run-dir")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"run directory {run_dir} belongs to user {info.st_uid}, not to you "
                          f"({os.geteuid()}); give your own with --run-dir")
    if info.st_mode & 0o022:
        raise ConfigError(f"run directory {run_dir} is writable by others (mode "
                          f"{stat.S_IMODE(info.st_mode):o}); `chmod go-w {run_dir}` or give "
                          "another with --run-dir")


def open_log(run_dir: str) -> int:
    """The server log in run_dir, opened for appending without following a link (mode 0600
    when created); a file descriptor."""
    path = os.path.join(run_dir, LOG_FILE)
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open the log {path}: {exc.strerror} (a symbolic link is "
                          "refused)") from None


def acquire(run_dir: str, name: str) -> int:
    """Take the lock file `name` in run_dir for this process's life and write our pid in it;
    the file descriptor, to keep open (closing any descriptor of the file releases a POSIX
    lock). ConfigError when another process holds it."""
    path = os.path.join(run_dir, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = lock_holder(run_dir, name)
        os.close(fd)
        raise ConfigError(f"a server is already running from {run_dir} (pid {holder}); stop it "
                          f"with `zerobatch stop --run-dir {run_dir}`") from None
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    return fd


def lock_holder(run_dir: str, name: str) -> int | None:
    """The pid of the process that holds the lock file `name` in run_dir, as the kernel
    reports it, or None when nobody does (or there is no such file). Never call it in the
    holder: closing any descriptor of a file drops the process's POSIX locks on it."""
    try:
        fd = os.open(os.path.join(run_dir, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        lock_type, _whence, _start, _length, pid = _FLOCK.unpack(
            fcntl.fcntl(fd, fcntl.F_GETLK, query))
    finally:
        os.close(fd)
    return None if lock_type == fcntl.F_UNLCK else pid


def release(fd: int, run_dir: str, name: str) -> None:
    """Remove the lock file and let go of the lock (at exit)."""
    try:
        os.unlink(os.path.join(run_dir, name))
    except FileNotFoundError:
        pass
    os.close(fd)
