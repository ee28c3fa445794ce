"""HTTPS on the inference port: a real server started with a self-signed certificate and key
(made by the `openssl` command) serves predictions over TLS on the socket the broker binds
and hands to its front ends, answers nothing to plain HTTP on that port, takes its TLS
settings from a TorchServe config.properties too, and `zerobatch start` refuses a
certificate or key that cannot be loaded, naming the file, before anything starts."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile

import pytest

from tests.support.http_request import http_request
from tests.support.servers import (
    TEST_MODELS,
    Server,
    cli,
    finish,
    free_port,
    json_body,
    processes_mentioning,
)
from zerobatch.api import tls
from zerobatch.config import FrontendConfig
from zerobatch.errors import ConfigError

pytestmark = pytest.mark.integration

OPENSSL = shutil.which("openssl")
if OPENSSL is None:  # pragma: no cover - the test machines have it
    pytest.skip("the openssl command is not installed", allow_module_level=True)


def make_pair(directory, name: str, *extra: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its unencrypted key: (cert, key) paths."""
    cert, key = str(directory / f"{name}.crt.pem"), str(directory / f"{name}.key.pem")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", *extra],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def pem(tmp_path_factory):
    """The server's certificate and key."""
    return make_pair(tmp_path_factory.mktemp("pem"), "server")


def trusting(cert: str) -> ssl.SSLContext:
    """A client context that trusts only cert (and checks that it names 127.0.0.1)."""
    return ssl.create_default_context(cafile=cert)


def https_request(port: int, cert: str, requests: list[tuple[str, str, bytes | None, dict]]
                  ) -> list[tuple[int, dict, bytes]]:
    """The answers to requests sent one after the other on one kept-alive TLS connection."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=trusting(cert))
    try:
        answers = []
        for method, path, body, headers in requests:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            answers.append((response.status, dict(response.getheaders()), response.read()))
        return answers
    finally:
        conn.close()


@pytest.fixture
def server(request):
    """A Server on free ports and its own run directory, stopped (and its processes killed)
    in a finalizer whatever the test does; the test starts it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TS_")}
    made = Server(run_dir=tempfile.mkdtemp(prefix="zb"), http_port=free_port(),
                  client_address=f"tcp://127.0.0.1:{free_port()}", env=env)
    request.addfinalizer(lambda: finish(made))
    return made


def start_args(server: Server, *flags: str) -> list[str]:
    return ["start", "--run-dir", server.run_dir, "--client-address", server.client_address,
            "--startup-timeout", "60", "--disable-token-auth",
            "--metrics-address", f"http://127.0.0.1:{free_port()}", *flags]


def assert_nothing_runs(server: Server) -> None:
    assert processes_mentioning(server.run_dir) == []
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server.http_port)) != 0


# ---------------------------------------------------------------------- serving

def test_predictions_over_https_and_plain_http_gets_no_answer(make_server, pem):
    cert, key = pem
    server = make_server({"echo": "echo"}, "--inference-https", "--certificate-file", cert,
                         "--private-key-file", key, "--disable-token-auth")
    assert f"HTTP https://127.0.0.1:{server.http_port}," in server.start_output
    octets = {"Content-Type": "application/octet-stream"}
    big = os.urandom(1_000_000)
    answers = https_request(server.http_port, cert, [
        ("POST", "/predictions/echo", b'{"x": [1, 2]}', {"Content-Type": "application/json"}),
        ("POST", "/predictions/echo", big, octets),  # many TLS records in, many out
        ("GET", "/ping", None, {}),
    ])
    (status, headers, body), (big_status, _h, big_body), (ping_status, _h2, _b) = answers
    assert status == 200, body
    assert json_body(body) == {"x": [1, 2]}
    assert (big_status, big_body == big) == (200, True)
    assert ping_status == 200

    # plain HTTP on the TLS port: the handshake fails, no HTTP answer comes back
    with pytest.raises((http.client.HTTPException, OSError)):
        server.http("GET", "/ping", timeout=10)
    # a client that does not trust the certificate is refused by its own check
    conn = http.client.HTTPSConnection("127.0.0.1", server.http_port, timeout=10,
                                       context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/ping")
    conn.close()
    # and the front end serves on
    ((status, _h, body),) = https_request(server.http_port, cert, [
        ("POST", "/predictions/echo", b"hello", {"Content-Type": "text/plain"})])
    assert (status, body) == (200, b"hello")


def test_the_metrics_api_over_https(make_server, pem):
    cert, key = pem
    metrics_port = free_port()
    server = make_server({"echo": "echo"}, "--certificate-file", cert, "--private-key-file",
                         key, "--metrics-address", f"https://127.0.0.1:{metrics_port}")
    assert server.metrics_port == metrics_port
    ((status, headers, body), (page_status, _h, page)) = https_request(metrics_port, cert, [
        ("GET", "/metrics?name[]=zerobatch_workers", None, {}),
        ("GET", "/dashboard", None, {})])
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'zerobatch_workers{model_name="echo",model_version="1.0",state="live"} 1.0' in body
    assert page_status == 200 and b"<html" in page.lower()
    with pytest.raises((http.client.HTTPException, OSError)):  # no plain HTTP on that port
        http_request(metrics_port, "GET", "/metrics", None, None, 10)


def test_the_grpc_service_over_tls(make_server, pem):
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed (requirements-dev.txt)")
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    from tritonclient.grpc import service_pb2_grpc
    cert, key = pem
    port = free_port()
    make_server({"echo": "echo"}, "--certificate-file", cert, "--private-key-file", key,
                "--grpc-address", f"https://127.0.0.1:{port}")
    with open(cert, "rb") as chain:
        credentials = grpc.ssl_channel_credentials(root_certificates=chain.read())
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        live = stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=30,
                               wait_for_ready=True)
        assert live.live
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # no plain gRPC there
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                       grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_refusal_reaches_the_client_before_the_tls_connection_closes(make_server, pem):
    """The front end's own refusals (written, then the connection closed at once) arrive
    whole over TLS: the close sends what was written first."""
    cert, key = pem
    server = make_server({"echo": "echo"}, "--inference-https", "--certificate-file", cert,
                         "--private-key-file", key, "--max-header-size", "2048",
                         "--disable-token-auth")
    context = trusting(cert)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["code"] == 431


def test_config_properties_with_an_https_inference_address(server, pem, tmp_path):
    cert, key = pem
    properties = tmp_path / "config.properties"
    properties.write_text(f"""\
inference_address=https://127.0.0.1:{server.http_port}
model_store={TEST_MODELS}
load_models=echo=echo
certificate_file={cert}
private_key_file={key}
""")
    result = cli(*start_args(server, "--ts-config", str(properties)), env=server.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"HTTP https://127.0.0.1:{server.http_port}," in result.stdout
    ((status, _h, body),) = https_request(server.http_port, cert, [
        ("POST", "/predictions/echo", b'{"a": 1}', {"Content-Type": "application/json"})])
    assert (status, json_body(body)) == (200, {"a": 1})


# ---------------------------------------------------------------------- refusals

@pytest.mark.parametrize("broken", ["missing", "garbage"])
def test_start_fails_fast_on_a_key_it_cannot_load_and_leaves_nothing_running(
        server, pem, tmp_path, broken):
    cert, _key = pem
    key = tmp_path / "key.pem"
    if broken == "garbage":
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    result = cli(*start_args(server, "--http-port", str(server.http_port), "--model-store",
                             TEST_MODELS, "--models", "echo=echo", "--inference-https",
                             "--certificate-file", cert, "--private-key-file", str(key)),
                 env=server.env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"zerobatch: error: TLS: private_key_file {key} ")
    assert len(result.stderr.splitlines()) == 1
    assert "zerobatch started" not in result.stdout
    assert_nothing_runs(server)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, pem):
    """Files that do not make a TLS pair with the server's, by what is wrong with them."""
    directory = tmp_path_factory.mktemp("bad")
    other_cert, other_key = make_pair(directory, "other")
    garbage = directory / "garbage.pem"
    garbage.write_text("garbage\n")
    encrypted = directory / "encrypted.key.pem"
    subprocess.run([OPENSSL, "pkey", "-in", pem[1], "-aes256", "-passout", "pass:secret",
                    "-out", str(encrypted)], check=True, capture_output=True, timeout=60)
    return {"other_cert": other_cert, "other_key": other_key, "garbage": str(garbage),
            "encrypted": str(encrypted), "missing": str(directory / "missing.pem")}


@pytest.mark.parametrize("cert, key, message", [
    ("missing", "key", "TLS: certificate_file {cert} cannot be read: No such file"),
    ("cert", "missing", "TLS: private_key_file {key} cannot be read: No such file"),
    ("garbage", "key", "TLS: certificate_file {cert} holds no PEM certificate"),
    ("cert", "garbage", "TLS: private_key_file {key} holds no PEM private key"),
    ("cert", "cert", "TLS: private_key_file {key} holds no PEM private key"),
    ("cert", "other_key", "TLS: private_key_file {key} is not the key of the certificate in "
                          "certificate_file {cert}"),
    ("other_cert", "key", "TLS: private_key_file {key} is not the key of the certificate"),
    ("cert", "encrypted", "TLS: private_key_file {key} is encrypted"),
])
def test_a_pair_that_cannot_be_loaded_is_named(pem, bad_files, cert, key, message):
    files = {"cert": pem[0], "key": pem[1], **bad_files}
    cert, key = files[cert], files[key]
    with pytest.raises(ConfigError) as info:
        tls.tls_options(cert, key)
    assert str(info.value).startswith(message.format(cert=cert, key=key))
    assert tls.tls_options(*pem) == {"ssl_certfile": pem[0], "ssl_keyfile": pem[1]}
    assert tls.tls_options("", "") == {}


def test_the_front_end_refuses_a_bad_key_at_start(pem, bad_files, tmp_path):
    """A front end given a pair that cannot be loaded (a file changed after `zerobatch
    start` checked it) exits 2 with the reason, and binds nothing."""
    port = free_port()
    config = FrontendConfig(broker_address=f"ipc://{tmp_path}/none.sock", port=port,
                            certificate_file=pem[0], private_key_file=bad_files["garbage"])
    result = subprocess.run([sys.executable, "-P", "-m", "zerobatch.api.frontend", "--config",
                             config.to_json()], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot start: TLS: private_key_file {bad_files['garbage']} holds no PEM" in (
        result.stderr)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
