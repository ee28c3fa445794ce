"""Token authorization (zerobatch/token_keys.py, api/token_auth.py) against TorchServe 0.12's
util/TokenAuthorization.java and http/TokenAuthorizationHandler.java: the key file's bytes and
mode, rotation, expiration on an injected clock, the re-read after a rotation, the header
parsing, a bad key file; and the apps that use it, in process (falcon.testing): the management
app (every call needs the management key, /token the API key) and the inference app
(predictions need the inference key, checked before the body is read)."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time

import falcon.testing
import pytest

import zerobatch.api.http_app as http_app
from zerobatch import token_keys
from zerobatch.api import token_auth
from zerobatch.api.client_helpers import Reply
from zerobatch.api.http_app import create_app
from zerobatch.api.management_app import create_management_app
from zerobatch.api.management_helpers import ApiError, error_body
from zerobatch.api.token_auth import TokenCheck, bearer_token
from zerobatch.config import FrontendConfig
from zerobatch.errors import ConfigError

#: 2024-02-16T21:12:24.801167Z, the example of docs/token_authorization_api.md
T0 = 1708117944.801167
AUTHORIZATION_FAILED = (b'{\n  "code": 400,\n  "type": "InvalidKeyException",\n  "message": '
                        b'"Token Authorization failed. Token either incorrect, expired, or not '
                        b'provided correctly"\n}\n')
AUTHENTICATION_FAILED = AUTHORIZATION_FAILED.replace(b"Authorization failed",
                                                     b"Authentication failed")
#: Gson's pretty printing of the key file's JsonObject, with 16-byte keys
KEY_FILE_SHAPE = re.compile(
    rb'\{\n  "management": \{\n    "key": "([A-Za-z0-9_-]{22})",\n'
    rb'    "expiration time": "([0-9:.TZ-]+)"\n  \},\n'
    rb'  "inference": \{\n    "key": "([A-Za-z0-9_-]{22})",\n'
    rb'    "expiration time": "([0-9:.TZ-]+)"\n  \},\n'
    rb'  "API": \{\n    "key": "([A-Za-z0-9_-]{22})"\n  \}\n\}\Z')


class Clock:
    """A settable clock, for the wall clock (`now`) and the re-read pacing (`monotonic`)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def key_file(tmp_path):
    """A key file made at T0 (for checks on a clock set from T0)."""
    path = str(tmp_path / "key_file.json")
    token_keys.create_key_file(path, 60, now=Clock(T0))
    return path


@pytest.fixture
def live_key_file(tmp_path):
    """A key file made now (for the apps, which read the real clock)."""
    path = str(tmp_path / "key_file.json")
    token_keys.create_key_file(path, 60)
    return path


def bearer(key: str) -> str:
    return f"Bearer {key}"


# ------------------------------------------------------------------ the key file

def test_key_file_is_torchserves_json_mode_0600_and_nothing_else_is_left(tmp_path):
    path = str(tmp_path / "key_file.json")
    old_umask = os.umask(0)  # the mode must not depend on the umask
    try:
        keys = token_keys.create_key_file(path, 60, now=Clock(T0))
    finally:
        os.umask(old_umask)
    with open(path, "rb") as handle:
        data = handle.read()
    match = KEY_FILE_SHAPE.match(data)
    assert match, data
    assert match.groups() == (keys.management.encode(), b"2024-02-16T22:12:24.801167Z",
                              keys.inference.encode(), b"2024-02-16T22:12:24.801167Z",
                              keys.api.encode())
    assert len({keys.management, keys.inference, keys.api}) == 3
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["key_file.json"]  # no temporary file left
    assert token_keys.read_keys(path) == keys


@pytest.mark.parametrize("seconds, text", [
    (T0, "2024-02-16T21:12:24.801167Z"),
    (1708117944.801, "2024-02-16T21:12:24.801Z"),  # Instant.toString: groups of 3 digits
    (1708117944, "2024-02-16T21:12:24Z"),
    (0, "1970-01-01T00:00:00Z"),
])
def test_expiration_times_are_javas_instant_to_string(seconds, text):
    assert token_keys.format_instant(seconds) == text
    assert token_keys.parse_instant(text) == pytest.approx(seconds, abs=1e-6)


def test_parse_instant_takes_nanoseconds_and_refuses_what_is_not_an_instant():
    assert token_keys.parse_instant("2024-02-16T21:12:24.801167123Z") == pytest.approx(
        T0, abs=1e-6)
    for text in ("2024-02-16 21:12:24Z", "2024-02-16T21:12:24", "yesterday", 12):
        with pytest.raises(ValueError):
            token_keys.parse_instant(text)


def test_create_replaces_a_file_left_by_an_earlier_run_and_not_a_links_target(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me")
    path = tmp_path / "key_file.json"
    path.symlink_to(target)
    token_keys.create_key_file(str(path), 60)
    assert not path.is_symlink() and target.read_text() == "keep me"
    first = token_keys.read_keys(str(path))
    second = token_keys.create_key_file(str(path), 60)
    assert token_keys.read_keys(str(path)) == second != first


def test_create_in_a_missing_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot write the token key file"):
        token_keys.create_key_file(str(tmp_path / "nowhere" / "key_file.json"), 60)


def test_rotate_replaces_one_key_and_its_expiration_in_a_new_file(key_file):
    before = token_keys.read_keys(key_file)
    inode = os.stat(key_file).st_ino
    after = token_keys.rotate(key_file, "inference", 30, now=Clock(T0 + 100))
    assert after == token_keys.read_keys(key_file)
    assert after.inference != before.inference
    assert after.inference_expires_s == pytest.approx(T0 + 100 + 30 * 60)
    assert (after.management, after.management_expires_s, after.api) == (
        before.management, before.management_expires_s, before.api)
    assert os.stat(key_file).st_ino != inode  # replaced whole, never rewritten in place
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert sorted(os.listdir(os.path.dirname(key_file))) == ["key_file.json"]
    managed = token_keys.rotate(key_file, "management", 30, now=Clock(T0 + 200))
    assert managed.management != before.management and managed.inference == after.inference


def test_only_the_management_and_inference_keys_rotate(key_file):
    for kind in ("api", "API", "Management", ""):
        with pytest.raises(ValueError):
            token_keys.rotate(key_file, kind, 60)


def test_rotate_without_a_key_file_fails(tmp_path):
    with pytest.raises(FileNotFoundError):
        token_keys.rotate(str(tmp_path / "key_file.json"), "inference", 60)


def test_remove_key_file_and_a_missing_one_is_fine(key_file):
    token_keys.remove_key_file(key_file)
    assert not os.path.exists(key_file)
    token_keys.remove_key_file(key_file)


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"management": {}}',
    b'{"management": {"key": "a", "expiration time": "2024-02-16T21:12:24Z"}, '
    b'"inference": {"key": "b", "expiration time": "soon"}, "API": {"key": "c"}}',
    b'{"management": {"key": "a b", "expiration time": "2024-02-16T21:12:24Z"}, '
    b'"inference": {"key": "b", "expiration time": "2024-02-16T21:12:24Z"}, '
    b'"API": {"key": "c"}}',
    b" " * (token_keys.MAX_KEY_FILE_BYTES + 1),
])
def test_a_file_that_is_not_a_key_file_is_a_config_error(tmp_path, content):
    path = tmp_path / "key_file.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match="not a token key file"):
        token_keys.read_keys(str(path))


# ------------------------------------------------------------------ the header

@pytest.mark.parametrize("value, token", [
    ("Bearer abc", "abc"),
    ("Bearer \t  abc", "abc"),          # \s+
    ("Bearer abc def", None),           # \S+$: one token
    ("Bearer abc ", None),
    ("Bearer abc\n", None),
    ("Bearer ", None),
    ("Bearer", None),
    ("bearer abc", None),               # the pattern is case-sensitive
    ("Basic abc", None),
    (" Bearer abc", None),
    ("Bearer\xa0abc", None),            # Java's \s is ASCII whitespace only
    (None, None),
])
def test_bearer_header_parsing_is_torchserves_pattern(value, token):
    assert bearer_token(value) == token


# ------------------------------------------------------------------ TokenCheck

def test_each_key_serves_its_own_kind_only(key_file):
    keys = token_keys.read_keys(key_file)
    check = TokenCheck(key_file, now=Clock(T0)).check
    for kind in ("management", "inference", "api"):
        for other in ("management", "inference", "api"):
            assert check(kind, bearer(keys.key(other))) is (kind == other)
        assert not check(kind, None)
        assert not check(kind, keys.key(kind))  # no "Bearer "
        assert not check(kind, bearer(keys.key(kind)[:-1]))
        assert not check(kind, bearer(keys.key(kind) + "x"))
        assert not check(kind, bearer("é" + keys.key(kind)))  # non-ASCII: refused, no error
    assert not check("nonsense", bearer(keys.api))


def test_keys_expire_and_the_api_key_does_not(key_file):
    keys = token_keys.read_keys(key_file)
    now = Clock(T0)
    check = TokenCheck(key_file, now=now).check
    expires_s = T0 + 60 * 60
    now.value = expires_s - 0.001
    assert check("inference", bearer(keys.inference))
    assert check("management", bearer(keys.management))
    now.value = expires_s  # TorchServe: expired unless now.isBefore(expiration)
    assert not check("inference", bearer(keys.inference))
    assert not check("management", bearer(keys.management))
    now.value = expires_s + 10 * 365 * 86400
    assert check("api", bearer(keys.api))


def test_a_rotation_is_seen_after_the_reload_interval_with_one_stat_per_interval(
        key_file, monkeypatch):
    old = token_keys.read_keys(key_file)
    monotonic = Clock(100.0)
    check = TokenCheck(key_file, now=Clock(T0), monotonic=monotonic).check
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(token_auth.os, "stat", lambda *a, **k: stats.append(a) or real_stat(*a))
    for _ in range(100):
        assert check("inference", bearer(old.inference))
    assert len(stats) == 1  # the hot path costs no system call
    new = token_keys.rotate(key_file, "inference", 60, now=Clock(T0))
    monotonic.value += token_auth.RELOAD_INTERVAL_S / 2
    assert check("inference", bearer(old.inference))  # still the cached keys
    assert not check("inference", bearer(new.inference))
    assert len(stats) == 1
    monotonic.value += token_auth.RELOAD_INTERVAL_S / 2
    assert check("inference", bearer(new.inference))
    assert not check("inference", bearer(old.inference))
    assert check("management", bearer(old.management))  # the other keys stay
    assert len(stats) == 2


def test_refresh_reads_a_rotation_at_the_next_check(key_file):
    check = TokenCheck(key_file, now=Clock(T0), monotonic=Clock(5.0))
    old = token_keys.read_keys(key_file)
    assert check.check("management", bearer(old.management))
    new = token_keys.rotate(key_file, "management", 60, now=Clock(T0))
    assert check.check("management", bearer(old.management))
    check.refresh()
    assert check.check("management", bearer(new.management))
    assert not check.check("management", bearer(old.management))


def test_a_missing_or_bad_file_fails_every_check_logs_once_and_recovers(tmp_path, caplog):
    path = str(tmp_path / "key_file.json")
    monotonic = Clock(0.0)
    check = TokenCheck(path, now=Clock(T0), monotonic=monotonic).check
    caplog.set_level(logging.INFO, logger=token_auth.__name__)
    for _ in range(5):
        assert not check("api", "Bearer anything")
        monotonic.value += 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "FileNotFoundError" in errors[0].getMessage()

    keys = token_keys.create_key_file(path, 60, now=Clock(T0))
    monotonic.value += 1
    assert check("api", bearer(keys.api))
    assert "readable again" in caplog.records[-1].getMessage()

    with open(path, "w") as handle:
        handle.write("{garbage")
    monotonic.value += 1
    caplog.clear()
    for _ in range(3):
        assert not check("api", bearer(keys.api))
        monotonic.value += 1
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "not a token key file" in caplog.records[0].getMessage()


def test_a_key_file_that_is_a_symbolic_link_is_not_followed(tmp_path):
    real = tmp_path / "elsewhere.json"
    keys = token_keys.create_key_file(str(real), 60, now=Clock(T0))
    link = tmp_path / "key_file.json"
    link.symlink_to(real)
    assert not TokenCheck(str(link), now=Clock(T0)).check("api", bearer(keys.api))


# ------------------------------------------------------------------ the management app

class FakeControl:
    """The broker's control calls, answered with no models."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def control(self, op: str, timeout_ms: int | None = None, **args) -> dict:
        self.calls.append(op)
        return {"models": []}


@pytest.fixture
def management(live_key_file):
    control = FakeControl()
    app = create_management_app(control, key_file=live_key_file, token_expiration_min=30)
    return falcon.testing.TestClient(app), control


def call(client, method, path, key=None, query=""):
    headers = {} if key is None else {"Authorization": bearer(key)}
    return client.simulate_request(method, path, headers=headers, query_string=query)


def assert_refused(result, body=AUTHORIZATION_FAILED):
    assert result.status_code == 400
    assert result.headers["content-type"] == "application/json"
    assert result.content == body


def test_management_calls_need_the_management_key(management, live_key_file):
    client, control = management
    keys = token_keys.read_keys(live_key_file)
    for key in (None, keys.inference, keys.api, "nonsense"):
        assert_refused(call(client, "GET", "/models", key))
        assert_refused(call(client, "PUT", "/models/echo", key, "min_worker=2"))
        assert_refused(call(client, "GET", "/nothing", key))  # refused before routing
    assert control.calls == []  # nothing reached the broker
    assert call(client, "GET", "/models", keys.management).json == {"models": []}
    assert call(client, "GET", "/nothing", keys.management).status_code == 404


def test_the_api_description_needs_no_key(management):
    client, _control = management
    document = call(client, "OPTIONS", "/")
    assert document.status_code == 200 and document.json["openapi"]
    assert call(client, "GET", "/api-description").json == document.json
    assert call(client, "GET", "/").status_code == 405  # as TorchServe, before its check


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_token_replaces_a_key_and_answers_torchserves_empty_json(management, live_key_file,
                                                                 method):
    client, _control = management
    before = token_keys.read_keys(live_key_file)
    result = call(client, method, "/token", before.api, "type=inference")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    assert result.content == b"\n"  # sendJsonResponse(ctx, ""): "" and a newline
    after = token_keys.read_keys(live_key_file)
    assert after.inference != before.inference and after.management == before.management
    assert after.api == before.api
    assert stat.S_IMODE(os.stat(live_key_file).st_mode) == 0o600


def test_a_new_management_key_serves_at_once_and_the_old_one_no_more(management,
                                                                     live_key_file):
    client, _control = management
    before = token_keys.read_keys(live_key_file)
    assert call(client, "GET", "/models", before.management).status_code == 200
    assert call(client, "GET", "/token", before.api, "type=management").status_code == 200
    after = token_keys.read_keys(live_key_file)
    assert_refused(call(client, "GET", "/models", before.management))
    assert call(client, "GET", "/models", after.management).status_code == 200
    # the new key's expiration comes from token_expiration_min (30 here)
    assert after.management_expires_s == pytest.approx(time.time() + 30 * 60, abs=60)


def test_token_needs_the_api_key(management, live_key_file):
    client, _control = management
    keys = token_keys.read_keys(live_key_file)
    for key in (None, keys.management, keys.inference, "nonsense"):
        assert_refused(call(client, "GET", "/token", key, "type=inference"),
                       AUTHENTICATION_FAILED)
    assert token_keys.read_keys(live_key_file) == keys


@pytest.mark.parametrize("query", ["", "type=api", "type=MANAGEMENT", "type=", "kind=inference",
                                   "type=both&type=inference"])
def test_token_with_a_missing_or_wrong_type_is_torchserves_400(management, live_key_file,
                                                               query):
    client, _control = management
    keys = token_keys.read_keys(live_key_file)
    # TokenType.valueOf("NO TYPE PROVIDED" / "WRONG TYPE") throws inside the key check's try
    assert_refused(call(client, "GET", "/token", keys.api, query), AUTHENTICATION_FAILED)
    assert token_keys.read_keys(live_key_file) == keys


def test_token_takes_the_first_type_as_netty_does(management, live_key_file):
    client, _control = management
    keys = token_keys.read_keys(live_key_file)
    assert call(client, "GET", "/token/", keys.api,
                "type=management&type=nope").status_code == 200
    assert token_keys.read_keys(live_key_file).management != keys.management


def test_an_expired_management_key_is_refused_and_the_api_key_replaces_it(tmp_path):
    path = str(tmp_path / "key_file.json")
    keys = token_keys.create_key_file(path, 1, now=Clock(T0))  # expired long ago
    client = falcon.testing.TestClient(create_management_app(FakeControl(), key_file=path))
    assert_refused(call(client, "GET", "/models", keys.management))
    assert call(client, "GET", "/token", keys.api, "type=management").status_code == 200
    assert call(client, "GET", "/models",
                token_keys.read_keys(path).management).status_code == 200


def test_a_key_file_that_cannot_be_rewritten_is_the_same_400_and_logged(
        management, live_key_file, monkeypatch, caplog):
    client, _control = management
    key_file = live_key_file
    keys = token_keys.read_keys(key_file)

    def replace_fails(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(token_keys.os, "replace", replace_fails)
    assert_refused(call(client, "GET", "/token", keys.api, "type=inference"),
                   AUTHENTICATION_FAILED)
    assert token_keys.read_keys(key_file) == keys
    assert os.listdir(os.path.dirname(key_file)) == ["key_file.json"]  # temp file removed
    assert "failed to update key file" in caplog.text


def test_the_token_resource_checks_the_api_key_even_without_the_middleware(live_key_file):
    keys = token_keys.read_keys(live_key_file)
    app = falcon.asgi.App()
    app.add_route("/token", token_auth.TokenResource(TokenCheck(live_key_file), 60))

    async def answer(req, resp, error, params):
        resp.status, resp.data = error.http_status, error_body(
            error.http_status, error.type_name, error.message)

    app.add_error_handler(ApiError, answer)
    client = falcon.testing.TestClient(app)
    result = call(client, "GET", "/token", keys.management, "type=inference")
    assert result.status_code == 400 and result.json["message"].startswith(
        "Token Authentication failed")
    assert token_keys.read_keys(live_key_file) == keys


def test_without_a_key_file_no_key_is_needed_and_there_is_no_token_path():
    client = falcon.testing.TestClient(create_management_app(FakeControl()))
    assert call(client, "GET", "/models").status_code == 200
    assert call(client, "GET", "/token", None, "type=inference").status_code == 404


# ------------------------------------------------------------------ the inference app

class FakeClient:
    """The inference app's AsyncClient: every prediction echoes its body."""

    def __init__(self) -> None:
        self.predictions: list[bytes] = []

    async def predict_or_stream(self, model: str, body: bytes, **kwargs) -> Reply:
        self.predictions.append(body)
        return Reply(200, "application/json", None, body)

    async def control(self, op: str, **kwargs) -> dict:
        return {"status": "Healthy", "ready": True}

    async def aclose(self) -> None:
        pass


@pytest.fixture
def inference(live_key_file, monkeypatch):
    bodies_read = []
    real_read_body = http_app.read_body

    async def spy(req, limit):
        bodies_read.append(req.path)
        return await real_read_body(req, limit)

    monkeypatch.setattr(http_app, "read_body", spy)
    fake = FakeClient()
    app = create_app(FrontendConfig(broker_address="ipc:///nowhere",
                                    key_file=live_key_file), fake)
    return falcon.testing.TestClient(app), fake, bodies_read


def test_predictions_need_the_inference_key_checked_before_the_body_is_read(inference,
                                                                           live_key_file):
    client, fake, bodies_read = inference
    keys = token_keys.read_keys(live_key_file)
    for method in ("POST", "PUT"):
        for key in (None, keys.management, keys.api, "nonsense"):
            for path in ("/predictions/echo", "/predictions/echo/1.0"):
                headers = {"Authorization": bearer(key)} if key else {}
                result = client.simulate_request(method, path, body=b'{"x": 1}',
                                                 headers=headers)
                assert_refused(result)
                assert "x-request-id" not in result.headers
    assert fake.predictions == [] and bodies_read == []
    result = client.simulate_post("/predictions/echo", body=b'{"x": 1}',
                                  headers={"Authorization": bearer(keys.inference)})
    assert result.status_code == 200 and result.content == b'{"x": 1}'
    assert fake.predictions == [b'{"x": 1}'] and bodies_read == ["/predictions/echo"]


def test_ping_ready_and_the_description_need_no_key(inference):
    client, _fake, _bodies = inference
    assert client.simulate_get("/ping").content == b'{\n  "status": "Healthy"\n}\n'
    assert client.simulate_get("/ready").status_code == 200
    assert client.simulate_options("/").json["openapi"]
    assert client.simulate_get("/api-description").status_code == 200


def test_the_inference_app_without_a_key_file_needs_no_key():
    fake = FakeClient()
    client = falcon.testing.TestClient(create_app(FrontendConfig(broker_address="ipc:///x"),
                                                  fake))
    assert client.simulate_post("/predictions/echo", body=b"1").status_code == 200


def test_the_refusal_body_is_torchserves_error_response():
    assert token_auth.INVALID_KEY_BODY == AUTHORIZATION_FAILED
    assert json.loads(AUTHORIZATION_FAILED) == {
        "code": 400, "type": "InvalidKeyException",
        "message": "Token Authorization failed. Token either incorrect, expired, or not "
                   "provided correctly"}
