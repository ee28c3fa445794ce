"""Token authorization on a real server (`--token-auth` keeps zerobatch's default, which
tests/support/servers.py otherwise turns off): the broker writes the key file into the run
directory (mode 0600) and removes it at stop, the front ends ask for the inference key on
predictions and not on /ping, `zerobatch token` prints the keys, and a rotation written into
the file (as the management app's /token does) reaches every front end."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.support.servers import cli, free_port
from zerobatch import token_keys

pytestmark = pytest.mark.integration

#: TorchServe's ErrorResponse for a refused key, as NettyUtils.sendError writes it
REFUSED = (b'{\n  "code": 400,\n  "type": "InvalidKeyException",\n  "message": "Token '
           b'Authorization failed. Token either incorrect, expired, or not provided '
           b'correctly"\n}\n')
#: how long a rotation may take to reach the front ends (RELOAD_INTERVAL_S is 0.5 s)
ROTATION_WAIT_S = 10


@pytest.fixture
def own_ports(tmp_path) -> tuple[str, str]:
    """--ts-config with a free management port: TorchServe's default, 8081, may be taken."""
    properties = tmp_path / "config.properties"
    properties.write_text(f"management_address=http://127.0.0.1:{free_port()}\n")
    return "--ts-config", str(properties)


def predict(server, key: str | None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    status, _headers, body = server.http("POST", "/predictions/echo", b'{"ok": 1}', headers)
    return status, body


def token(server, kind: str) -> str:
    result = cli("token", kind, "--run-dir", server.run_dir, env=server.env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_predictions_need_the_inference_key_and_ping_does_not(make_server, own_ports):
    server = make_server({"echo": "echo"}, "--token-auth", "--frontends", "2", *own_ports)
    path = os.path.join(server.run_dir, "key_file.json")
    assert f"token authorization is on: keys in {path}" in server.start_output
    assert "zerobatch token inference --run-dir" in server.start_output
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys = token_keys.read_keys(path)
    assert [token(server, kind) for kind in ("inference", "management", "api")] == [
        keys.inference, keys.management, keys.api]

    for key in (None, "nonsense", keys.management, keys.api, keys.inference[:-1]):
        assert predict(server, key) == (400, REFUSED)
    status, body = predict(server, keys.inference)
    assert (status, json.loads(body)) == (200, {"ok": 1})
    assert server.http("GET", "/ping")[:3:2] == (200, b'{\n  "status": "Healthy"\n}\n')
    assert server.http("GET", "/ready")[0] == 200

    # a rotation, written as the management app's /token writes it, reaches both front ends
    new = token_keys.rotate(path, "inference", 60)
    server.wait_for(lambda: predict(server, new.inference)[0] == 200
                    and predict(server, keys.inference)[0] == 400,
                    ROTATION_WAIT_S, "the new inference key")
    for _ in range(10):  # fresh connections, whichever front end accepts them
        assert predict(server, new.inference)[0] == 200
        assert predict(server, keys.inference) == (400, REFUSED)
    assert token(server, "inference") == new.inference

    assert server.stop().returncode == 0
    assert not os.path.exists(path)
    stopped = cli("token", "--run-dir", server.run_dir, env=server.env)
    assert stopped.returncode == 2 and "no server is running" in stopped.stderr


def test_with_token_authorization_off_nothing_needs_a_key(make_server, own_ports):
    server = make_server({"echo": "echo"}, *own_ports)  # servers.py adds --disable-token-auth
    assert not os.path.exists(os.path.join(server.run_dir, "key_file.json"))
    assert "token authorization" not in server.start_output
    status, body = predict(server, None)
    assert (status, json.loads(body)) == (200, {"ok": 1})
    result = cli("token", "--run-dir", server.run_dir, env=server.env)
    assert result.returncode == 2 and "token authorization is off" in result.stderr
