"""CURVE keys: making them (`zerobatch keys`) and reading them, with errors that say the fix.

A key pair is two files in ZeroMQ's certificate format (pyzmq's zmq.auth): NAME.key holds
the public key, NAME.key_secret the public and the secret key (mode 0600). The server is given
its .key_secret file and a directory of the public .key files of the clients it accepts; a
client is given the server's public .key file and its own .key_secret file. Remote workers
(docs/remote-workers.md) are CURVE clients of the broker's worker endpoint in the same way,
with their own directory of authorized keys (--curve-worker-keys).
"""

from __future__ import annotations

import glob
import os
import shutil

import zmq
import zmq.auth

from zerobatch.errors import ConfigError


def make_key_pair(directory: str, name: str) -> tuple[str, str]:
    """Write NAME.key and NAME.key_secret into directory (made mode 0700 if missing); refuse
    to overwrite a pair. The paths (public, secret)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public = os.path.join(directory, f"{name}.key")
    secret = public + "_secret"
    for path in (public, secret):
        if os.path.lexists(path):
            raise ConfigError(f"{path} exists; remove it or choose another name")
    old_mask = os.umask(0o077)
    try:
        made = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old_mask)
    os.chmod(made[0], 0o644)
    return made[0], made[1]


def authorize(public_key_file: str, directory: str) -> str:
    """Copy a public key file into a server's authorized keys directory (made if missing);
    the copy's path."""
    os.makedirs(directory, exist_ok=True)
    copy = os.path.join(directory, os.path.basename(public_key_file))
    shutil.copyfile(public_key_file, copy)
    return copy


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file."""
    public, secret = _load(path)
    if secret is None:
        raise ConfigError(f"{path} holds no secret key: give the .key_secret file that "
                          "`zerobatch keys` made")
    return public, secret


def load_public(path: str) -> bytes:
    """The public key in a .key (or .key_secret) file."""
    return _load(path)[0]


def check_authorized_dir(directory: str, peers: str = "client") -> int:
    """The number of public key files in directory; ConfigError when it holds none. peers
    names whose keys it holds ("client", "worker"), for the message."""
    if not os.path.isdir(directory):
        raise ConfigError(f"authorized keys directory {directory} does not exist")
    count = len(glob.glob(os.path.join(directory, "*.key")))
    if not count:
        raise ConfigError(f"authorized keys directory {directory} holds no .key file: copy "
                          f"the public key (NAME.key) of each {peers} into it")
    return count


def connect_with_curve(socket: zmq.Socket, server_key_file: str, secret_key_file: str) -> None:
    """Make socket a CURVE client of the server whose public key server_key_file holds,
    authenticating with the key pair in secret_key_file; before `connect`. The files are
    read each time (a worker has three sockets; they are small)."""
    public, secret = load_secret(secret_key_file)
    socket.curve_serverkey = load_public(server_key_file)
    socket.curve_publickey = public
    socket.curve_secretkey = secret


def _load(path: str) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the CURVE key file {path}: {exc}") from None
