"""The management API on its own port, served by a real server: registration from the model
store, a file:// URL and an http:// URL, versions side by side, set-default, unregistration,
scaling under load, autoscaling, snapshots across a restart, and the refusals, with
TorchServe 0.12's status codes and JSON (pretty, then a newline)."""

from __future__ import annotations

import functools
import http.client
import http.server
import json
import os
import shutil
import ssl
import subprocess
import threading

import pytest

from tests.support.load import Load, errors, over_bound
from tests.support.servers import TEST_MODELS, Server, cli, finish, free_port, start_server

#: how long a registration, a scale or a worker's exit may take on a busy 2-core machine
BOUND_S = 60
LOAD_MAX_REQUESTS = 200_000


def management(server: Server, method: str, path: str, body: bytes | None = None,
               headers: dict | None = None) -> tuple[int, dict | list]:
    status, _headers, raw = server.management(method, path, body, headers)
    assert raw.endswith(b"\n"), raw  # Gson's pretty JSON, then a newline
    return status, json.loads(raw)


def initialized_pids(path: str) -> list[int]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [int(line) for line in handle if line.strip()]


def versioned_copy(tmp_path, name: str, version: str) -> str:
    """A copy of the init_counter model directory whose manifest says `version`."""
    target = tmp_path / f"{name}-{version}"
    shutil.copytree(os.path.join(TEST_MODELS, "init_counter"), target)
    manifest_path = target / "MAR-INF" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"].update(modelName=name, modelVersion=version)
    manifest_path.write_text(json.dumps(manifest))
    return str(target)


@pytest.fixture
def model_api_server(tmp_path):
    """A server with the model API on, serving echo, whose workers log their initialize."""
    env = {**os.environ, "ZB_INIT_LOG": str(tmp_path / "initialized")}
    server = start_server({"echo": "echo"}, "--enable-model-api", "--frontends", "1", env=env)
    yield server
    finish(server)


def test_register_from_the_model_store_serves_and_unregister_removes(model_api_server,
                                                                    tmp_path):
    server = model_api_server
    status, answer = management(
        server, "POST", "/models?url=init_counter&initial_workers=2&synchronous=true")
    assert (status, answer) == (200, {"status": 'Model "init_counter" Version: 1.0 registered '
                                                "with 2 initial workers"})
    # each new worker's handler was initialized once, before the call answered
    pids = {w["pid"] for w in server.workers("init_counter")}
    assert sorted(initialized_pids(str(tmp_path / "initialized"))) == sorted(pids)
    status, _h, body = server.predict("init_counter", b"{}")
    assert status == 200 and json.loads(body)["pid"] in pids
    status, listed = management(server, "GET", "/models")
    assert listed == {"models": [{"modelName": "echo", "modelUrl": "echo"},
                                 {"modelName": "init_counter", "modelUrl": "init_counter"}]}
    # registered twice: TorchServe's ConflictStatusException
    status, answer = management(server, "POST", "/models?url=init_counter")
    assert (status, answer) == (409, {
        "code": 409, "type": "ConflictStatusException",
        "message": "Model version 1.0 is already registered for model init_counter"})
    assert management(server, "DELETE", "/models/init_counter") == (
        200, {"status": 'Model "init_counter" unregistered'})
    status, _h, body = server.predict("init_counter", b"{}")
    assert status == 404 and json.loads(body)["type"] == "ModelNotFoundException"
    for pid in pids:  # the workers finished and stopped
        server.wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), timeout_s=BOUND_S,
                        what=f"worker {pid} of the unregistered model gone")
    assert server.predict("echo", b'{"still": "served"}')[0] == 200


def test_register_asynchronously_answers_202_then_the_workers_come(model_api_server):
    server = model_api_server
    status, answer = management(
        server, "POST", "/models?url=init_counter&initial_workers=1&synchronous=false")
    assert (status, answer) == (202, {"status": "Processing worker updates..."})
    server.wait_for(lambda: server.workers("init_counter"), timeout_s=BOUND_S,
                    what="the registered model's worker")
    assert server.predict("init_counter", b"{}")[0] == 200


def test_register_with_no_workers_then_scale_up(model_api_server):
    server = model_api_server
    status, answer = management(server, "POST", "/models?url=init_counter")
    assert (status, answer) == (200, {
        "status": 'Model "init_counter" Version: 1.0 registered with 0 initial workers. Use '
                  "scale workers API to add workers for the model."})
    status, answer = management(server, "PUT",
                                "/models/init_counter?min_worker=1&synchronous=true")
    assert (status, answer) == (200, {"status": "Workers scaled to 1 for model: init_counter"})
    assert server.predict("init_counter", b"{}")[0] == 200


def test_versions_side_by_side_set_default_and_delete_rules(model_api_server, tmp_path):
    server = model_api_server
    for version in ("1.0", "2.0"):
        url = f"file://{versioned_copy(tmp_path, 'm', version)}"
        status, answer = management(server, "POST",
                                    f"/models?url={url}&initial_workers=1&synchronous=true")
        assert status == 200, answer
    pid_of = {entry["modelVersion"]: entry["workers"][0]["pid"]
              for entry in server.describe()["models"] if entry["modelName"] == "m"}
    served = lambda path: json.loads(server.http("POST", path, b"{}")[2])["pid"]  # noqa: E731
    assert served("/predictions/m") == pid_of["1.0"]  # the first registered is the default
    assert served("/predictions/m/2.0") == pid_of["2.0"]
    status, described = management(server, "GET", "/models/m/all")
    assert [e["modelVersion"] for e in described] == ["1.0", "2.0"]
    assert management(server, "DELETE", "/models/m") == (403, {
        "code": 403, "type": "InvalidModelVersionException",
        "message": "Cannot remove default version for model m"})
    assert management(server, "PUT", "/models/m/2.0/set-default") == (200, {
        "status": 'Default version successfully updated for model "m" to "2.0"'})
    assert served("/predictions/m") == pid_of["2.0"]
    assert management(server, "PUT", "/models/m/3.0/set-default") == (404, {
        "code": 404, "type": "ModelVersionNotFoundException",
        "message": "Model version 3.0 does not exist for model m"})
    assert management(server, "DELETE", "/models/m/1.0")[0] == 200
    assert management(server, "DELETE", "/models/m/1.0") == (404, {
        "code": 404, "type": "ModelVersionNotFoundException",
        "message": "Model version: 1.0 does not exist for model: m"})
    assert served("/predictions/m") == pid_of["2.0"]


class _ArchiveServer(http.server.SimpleHTTPRequestHandler):
    """Files from the site's directory; /redirect/NAME answers 302 to /NAME."""

    def do_GET(self) -> None:
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect"):])
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def archive_site(tmp_path):
    """An HTTP server on loopback serving tmp_path/site, stopped at the end."""
    site = tmp_path / "site"
    site.mkdir()
    handler = functools.partial(_ArchiveServer, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_register_from_an_http_url_downloads_into_the_model_store(tmp_path, archive_site):
    site, base = archive_site
    store = tmp_path / "store"
    store.mkdir()
    shutil.make_archive(str(site / "counter"), "zip", os.path.join(TEST_MODELS, "init_counter"))
    os.rename(site / "counter.zip", site / "counter.mar")
    server = start_server({"echo": os.path.join(TEST_MODELS, "echo")}, "--enable-model-api",
                          "--model-store", str(store), "--frontends", "1")
    try:
        url = f"{base}/counter.mar"
        status, answer = management(server, "POST",
                                    f"/models?url={url}&initial_workers=1&synchronous=true")
        assert status == 200, answer
        assert os.listdir(store) == ["counter.mar"]
        assert server.predict("init_counter", b"{}")[0] == 200
        # the same file name again: TorchServe's "Model file already exists"
        status, answer = management(server, "POST", f"/models?url={url}")
        assert (status, answer["type"]) == (500, "InternalServerException")
        assert answer["message"] == "Model file already exists counter.mar"
        # nothing there: a download error, and nothing left behind
        status, answer = management(server, "POST", f"/models?url={base}/missing.mar")
        assert (status, answer["type"]) == (400, "DownloadArchiveException")
        assert os.listdir(store) == ["counter.mar"]
        assert management(server, "DELETE", "/models/init_counter")[0] == 200
        assert os.listdir(store) == []  # what the registration downloaded goes with it
    finally:
        finish(server)


def test_a_redirect_outside_allowed_urls_is_not_followed(make_server, tmp_path, archive_site):
    site, base = archive_site
    shutil.make_archive(str(site / "counter"), "zip", os.path.join(TEST_MODELS, "init_counter"))
    store = tmp_path / "store"
    store.mkdir()
    allowed = base.replace(".", "\\\\.") + "/redirect/.*"
    server = make_server({"echo": os.path.join(TEST_MODELS, "echo")}, "--enable-model-api",
                         "--model-store", str(store), "--ts-config",
                         str(_properties(tmp_path, f"allowed_urls={allowed}")))
    status, answer = management(server, "POST", f"/models?url={base}/redirect/counter.zip")
    assert (status, answer["type"]) == (400, "DownloadArchiveException"), answer
    assert "redirected to a URL outside allowed_urls" in answer["message"]
    assert os.listdir(store) == []


def test_urls_outside_allowed_urls_and_relative_paths_are_refused(make_server, tmp_path):
    server = make_server({"echo": "echo"}, "--enable-model-api", "--ts-config",
                         str(_properties(tmp_path, "allowed_urls=https://models\\\\.example/.*")))
    for url, message in [
            ("http://127.0.0.1:1/m.mar",
             "Given URL http://127.0.0.1:1/m.mar does not match any allowed URL(s)"),
            (f"file://{TEST_MODELS}/echo",
             f"Given URL file://{TEST_MODELS}/echo does not match any allowed URL(s)"),
            ("../echo", "Relative path is not allowed in url: ../echo"),
            ("echo/../../secret", "Relative path is not allowed in url: echo/../../secret")]:
        assert management(server, "POST", f"/models?url={url}") == (404, {
            "code": 404, "type": "ModelNotFoundException", "message": message}), url
    assert management(server, "POST", "/models") == (400, {
        "code": 400, "type": "BadRequestException", "message": "Parameter url is required."})
    status, answer = management(server, "POST", "/models?url=echo&batch_size=big")
    assert (status, answer["type"]) == (400, "BadRequestException")
    status, _h, _b = server.management("POST", "/models", b"{" + b" " * 200_000 + b"}",
                                       {"Content-Type": "application/json"})
    assert status == 413


def _properties(tmp_path, *lines: str):
    path = tmp_path / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_model_api_is_off_by_default(make_server):
    server = make_server({"echo": "echo"})
    not_allowed = {"code": 405, "type": "MethodNotAllowedException",
                   "message": "Requested method is not allowed, please refer to API document."}
    assert management(server, "POST", "/models?url=init_counter") == (405, not_allowed)
    assert management(server, "DELETE", "/models/echo") == (405, not_allowed)
    assert server.predict("echo", b"{}")[0] == 200


def test_a_slow_registration_does_not_hold_up_another_model(make_server):
    """While a model whose handler takes 3 s to load registers synchronously, echo keeps
    answering: every request succeeds and many are served during the registration."""
    server = make_server({"echo": "echo"}, "--enable-model-api", "--frontends", "1",
                         env={**os.environ, "ZB_INIT_SLEEP_S": "3"})
    with Load(server, "echo", {"x": 1}, http_lanes=2, zmq_lanes=2, timeout_ms=10_000,
              max_requests=LOAD_MAX_REQUESTS, max_duration_s=BOUND_S) as load:
        load.wait_for_successes(20, timeout_s=20)
        before = len(load.outcomes)
        status, answer = management(
            server, "POST", "/models?url=init_counter&initial_workers=1&synchronous=true")
        during = len(load.outcomes) - before
    assert status == 200, answer
    outcomes = load.stop()
    assert errors(outcomes) == []
    assert not over_bound(outcomes, load.call_bound_s)
    assert during >= 20, f"only {during} echo requests were answered during the registration"


def test_scale_up_and_down_under_load_loses_nothing_and_initializes_once_per_worker(
        make_server, tmp_path):
    init_log = str(tmp_path / "initialized")
    env = {**os.environ, "ZB_INIT_LOG": init_log}
    server = make_server({"init_counter": "init_counter"}, "--workers", "1", "--frontends",
                         "1", "--max-queue", "1000", env=env)
    with Load(server, "init_counter", {"sleep_ms": 2}, http_lanes=2, zmq_lanes=2,
              timeout_ms=10_000, max_requests=LOAD_MAX_REQUESTS, max_duration_s=3 * BOUND_S
              ) as load:
        load.wait_for_successes(20, timeout_s=20)
        assert management(server, "PUT",
                          "/models/init_counter?min_worker=3&synchronous=true") == (
            200, {"status": "Workers scaled to 3 for model: init_counter"})
        grown = {w["pid"] for w in server.workers("init_counter")}
        load.wait_for_successes(20, timeout_s=20)
        assert management(server, "PUT",
                          "/models/init_counter?min_worker=1&synchronous=true") == (
            200, {"status": "Workers scaled to 1 for model: init_counter"})
        load.wait_for_successes(20, timeout_s=20)
    outcomes = load.stop()
    assert errors(outcomes) == [], "a request failed while the workers were scaled"
    assert len(grown) == 3
    assert sorted(initialized_pids(init_log)) == sorted(grown)


def test_autoscaling_follows_the_load_between_min_and_max(make_server):
    server = make_server({"init_counter": "init_counter"}, "--workers", "1", "--frontends",
                         "1", "--max-queue", "1000", "--scale-up-after", "0.5",
                         "--scale-down-after", "1")
    assert management(server, "PUT", "/models/init_counter?min_worker=1&max_worker=2")[0] == 202
    with Load(server, "init_counter", {"sleep_ms": 50}, http_lanes=4, zmq_lanes=4,
              timeout_ms=30_000, max_requests=LOAD_MAX_REQUESTS, max_duration_s=3 * BOUND_S
              ) as load:
        server.wait_for(lambda: len(server.workers("init_counter")) == 2, timeout_s=BOUND_S,
                        what="autoscaling to 2 workers under load")
        load.wait_for_successes(len(load.outcomes) + 20, timeout_s=BOUND_S)
    outcomes = load.stop()
    assert errors(outcomes) == []
    server.wait_for(lambda: len(server.workers("init_counter")) == 1, timeout_s=BOUND_S,
                    what="autoscaling back to 1 worker when idle")
    [entry] = management(server, "GET", "/models/init_counter")[1]
    assert (entry["minWorkers"], entry["maxWorkers"]) == (1, 2)


def test_registered_models_and_worker_counts_survive_a_restart(model_api_server, tmp_path):
    server = model_api_server
    url = f"file://{versioned_copy(tmp_path, 'm', '2.0')}"
    assert management(server, "POST",
                      f"/models?url={url}&initial_workers=2&synchronous=true")[0] == 200
    assert management(server, "PUT", "/models/echo?min_worker=1&max_worker=3")[0] == 202
    assert server.stop().returncode == 0
    snapshots = sorted(os.listdir(os.path.join(server.run_dir, "config")))
    assert snapshots[-1].endswith("-shutdown.cfg")
    # `zerobatch start` with neither --models nor --ts-config restores the newest snapshot
    result = cli("start", "--run-dir", server.run_dir, "--http-port", str(server.http_port),
                 "--client-address", server.client_address, "--disable-token-auth",
                 "--management-address", f"http://127.0.0.1:{server.management_port}",
                 "--metrics-address", f"http://127.0.0.1:{server.metrics_port}",
                 env=server.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restoring the models of the snapshot" in result.stderr
    described = {(e["modelName"], e["modelVersion"]): e for e in server.describe()["models"]}
    assert set(described) == {("echo", "1.0"), ("m", "2.0")}
    assert len(described[("m", "2.0")]["workers"]) == 2
    assert (described[("echo", "1.0")]["minWorkers"],
            described[("echo", "1.0")]["maxWorkers"]) == (1, 3)
    assert server.predict("m", b"{}")[0] == 200


def key(server: Server, kind: str) -> str:
    result = cli("token", kind, "--run-dir", server.run_dir, env=server.env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_the_management_api_and_zeromq_control_need_the_management_key(make_server):
    server = make_server({"echo": "echo"}, "--token-auth")
    refused = {"code": 400, "type": "InvalidKeyException",
               "message": "Token Authorization failed. Token either incorrect, expired, or "
                          "not provided correctly"}
    management_key, inference_key, api_key = (key(server, kind) for kind in
                                              ("management", "inference", "api"))
    for headers in (None, bearer("nonsense"), bearer(inference_key), bearer(api_key)):
        assert management(server, "GET", "/models", headers=headers) == (400, refused)
    status, listed = management(server, "GET", "/models", headers=bearer(management_key))
    assert status == 200 and listed["models"][0]["modelName"] == "echo"
    # /token replaces the inference key; only the API key may ask
    status, _h, body = server.management("GET", "/token?type=inference",
                                         headers=bearer(management_key))
    assert status == 400 and json.loads(body)["message"].startswith("Token Authentication")
    status, _h, body = server.management("GET", "/token?type=inference",
                                         headers=bearer(api_key))
    assert (status, body) == (200, b"\n")
    new_key = key(server, "inference")
    assert new_key != inference_key
    server.wait_for(lambda: server.http("POST", "/predictions/echo", b"[1]",
                                        bearer(new_key))[0] == 200,
                    what="the new inference key accepted")
    assert server.http("POST", "/predictions/echo", b"[1]", bearer(inference_key))[0] == 400
    # the same authorization covers the ZeroMQ control calls on the client endpoint
    from zerobatch.api.client import Client
    from zerobatch.errors import Forbidden
    with Client(server.client_address, timeout_ms=5000) as client:
        with pytest.raises(Forbidden):
            client.control("describe")
        with pytest.raises(Forbidden):
            client.control("describe", token=inference_key)
        described = client.control("describe", token=management_key)
    assert described["models"][0]["modelName"] == "echo"


def test_the_management_api_over_tls(make_server, tmp_path):
    cert, private_key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", private_key,
         "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    port = free_port()
    server = make_server({"echo": "echo"}, "--management-address", f"https://127.0.0.1:{port}",
                         "--certificate-file", cert, "--private-key-file", private_key)
    context = ssl.create_default_context(cafile=cert)
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        connection.request("GET", "/models")
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["models"][0]["modelName"] == "echo"
    finally:
        connection.close()
    with pytest.raises((ConnectionError, http.client.HTTPException)):  # no HTTP answer
        server.management_port = port
        server.management("GET", "/models", timeout=10)
