"""TorchServe's own answers, recorded once and kept as test data, for parity tests.

The parity tests (issue 20) compare zerobatch's answer to a request with the answer TorchServe
0.12.0 gave to the same request for the same archive: status, the headers clients read, and
the body bytes. TorchServe needs Java 17 and its own Python package, which CI does not have,
so its answers are recorded by a script (`python -m tests.torchserve.record_*`), run where
TorchServe is installed, and stored as JSON under tests/data/torchserve_answers/; the tests
read only the stored files. TORCHSERVE_BIN names the bin directory of a venv made with
`pip install torch torchserve==0.12.0 torch-model-archiver==0.12.0 pyyaml`.

    with TorchServe(store, {"m": "m.mar"}) as ts:
        answers["handler_raises"] = ts.record("POST", "/predictions/m", b"x")
    save("errors", answers)

A stored answer is {"status", "headers": {lowercase name: value}, "body_b64"}; `body(answer)`
gives its bytes, `assert_same_answer(status, headers, body, answer, header_names)` compares
one of ours with it.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWERS_DIR = os.path.join(ROOT, "tests", "data", "torchserve_answers")
#: where torchserve and torch-model-archiver 0.12.0 are installed (a venv's bin)
TORCHSERVE_BIN = os.environ.get("TORCHSERVE_BIN", "/work/tsenv/bin")
#: TorchServe's front end puts these on every answer (all but Netty's own 413s): compared
#: wherever TorchServe sent them
CACHE_HEADERS = ("cache-control", "expires", "pragma")
#: computed floats recorded on one CPU may round their last bits otherwise on another's
#: kernels: where such a body differs, its numbers are compared within these
FLOAT_REL_TOL = 1e-5
FLOAT_ABS_TOL = 1e-9
#: headers that change from run to run, never compared
VOLATILE_HEADERS = frozenset({"date", "x-request-id", "content-length", "connection"})


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TorchServe:
    """TorchServe 0.12.0 serving `models` (name -> archive in `model_store`) with token
    authorization off, on free loopback ports (its gRPC ports too), in its own temporary
    directory (its logs and pid file stay there, so several can run at once); stopped at
    exit."""

    def __init__(self, model_store: str, models: dict[str, str], config: dict | None = None,
                 ready_timeout_s: float = 120) -> None:
        self.model_store = os.path.abspath(model_store)
        self.models = models
        self.config = config or {}
        self.ready_timeout_s = ready_timeout_s
        self.inference_port = _free_port()
        self.management_port = _free_port()
        self.workdir = tempfile.mkdtemp(prefix="torchserve-")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> TorchServe:
        properties = {
            "inference_address": f"http://127.0.0.1:{self.inference_port}",
            "management_address": f"http://127.0.0.1:{self.management_port}",
            "metrics_address": f"http://127.0.0.1:{_free_port()}",
            # TorchServe's gRPC servers too, else two at once both take 7070 and 7071
            "grpc_inference_port": str(_free_port()), "grpc_management_port": str(_free_port()),
            "disable_token_authorization": "true", "enable_model_api": "true",
            "default_workers_per_model": "1", "install_py_dep_per_model": "false",
            **self.config}
        config_path = os.path.join(self.workdir, "config.properties")
        with open(config_path, "w") as out:
            out.writelines(f"{key}={value}\n" for key, value in properties.items())
        tmp = os.path.join(self.workdir, "tmp")
        os.makedirs(tmp)
        env = {**os.environ, "TMPDIR": tmp, "TEMP": tmp,
               "PATH": TORCHSERVE_BIN + os.pathsep + os.environ.get("PATH", "")}
        models = ",".join(f"{name}={path}" for name, path in self.models.items())
        self.process = subprocess.Popen(
            [os.path.join(TORCHSERVE_BIN, "torchserve"), "--start", "--foreground", "--ncs",
             "--ts-config", config_path, "--model-store", self.model_store,
             *(["--models", models] if models else []), "--disable-token-auth"],
            cwd=self.workdir, env=env, stdout=open(os.path.join(self.workdir, "out.log"), "wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"TorchServe exited; see {self.workdir}/out.log")
            try:
                ready = all(self._model_ready(name) for name in self.models)
            except OSError:
                ready = False
            if ready:
                return
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe's models are not ready; see {self.workdir}/out.log")

    def _model_ready(self, name: str) -> bool:
        status, _, body = request(self.management_port, "GET", f"/models/{name}")
        if status != 200:
            return False
        workers = json.loads(body)[0].get("workers", [])
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def record(self, method: str, path: str, body: bytes = b"",
               headers: dict | None = None, management: bool = False) -> dict:
        """TorchServe's answer to one request, as stored (see the module docstring)."""
        port = self.management_port if management else self.inference_port
        status, answer_headers, answer_body = request(port, method, path, body, headers)
        return {"request": {"method": method, "path": path, "headers": headers or {},
                            "body_b64": base64.b64encode(body).decode()},
                "status": status, "headers": answer_headers,
                "body_b64": base64.b64encode(answer_body).decode()}

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        if os.environ.get("KEEP_TORCHSERVE_LOGS") is None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def build_scripted_archive(archiver: str, export_dir: str, model_name: str, handler: str,
                           module: object, model_config: str) -> str:
    """Pack model_name (`module`, a torch.nn.Module saved as TorchScript, the handler file and
    `model_config` as its model-config.yaml) with the torch-model-archiver at `archiver` into
    export_dir; the archive's file name."""
    import textwrap
    import warnings

    import torch

    with tempfile.TemporaryDirectory(prefix=f"{model_name}-src-") as source:
        model_path = os.path.join(source, "model.pt")
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; archives ship it
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.script(module).save(model_path)
        config_path = os.path.join(source, "model-config.yaml")
        with open(config_path, "w") as out:
            out.write(textwrap.dedent(model_config).lstrip())
        subprocess.run([archiver, "--model-name", model_name, "--version", "1.0",
                        "--serialized-file", model_path, "--handler", handler,
                        "--config-file", config_path, "--export-path", export_dir, "--force"],
                       check=True, capture_output=True, timeout=120)
    return f"{model_name}.mar"


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
    """(status, {lowercase header: value}, body) of one HTTP request to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


def save(name: str, answers: dict) -> str:
    """Store answers (case name -> recorded answer) as tests/data/torchserve_answers/NAME.json."""
    os.makedirs(ANSWERS_DIR, exist_ok=True)
    path = os.path.join(ANSWERS_DIR, f"{name}.json")
    with open(path, "w") as out:
        json.dump({"torchserve": "0.12.0", "answers": answers}, out, indent=2, sort_keys=True)
        out.write("\n")
    return path


def load(name: str) -> dict:
    """The stored answers of tests/data/torchserve_answers/NAME.json (case -> answer)."""
    with open(os.path.join(ANSWERS_DIR, f"{name}.json")) as stored:
        return json.load(stored)["answers"]


def body(answer: dict) -> bytes:
    return base64.b64decode(answer["body_b64"])


def assert_same_answer(status: int, headers: dict, answer_body: bytes, recorded: dict,
                       header_names: tuple[str, ...] = ("content-type",),
                       computed: bool = False) -> None:
    """Ours equals TorchServe's: the status, each header of header_names (lowercase), the
    caching headers TorchServe sent (CACHE_HEADERS) and the body bytes (`computed`: see
    assert_same_computed_body)."""
    assert status == recorded["status"], (status, recorded["status"], answer_body)
    ours = {k.lower(): v for k, v in headers.items()}
    for name in header_names:
        assert ours.get(name) == recorded["headers"].get(name), (name, ours.get(name),
                                                                 recorded["headers"].get(name))
    for name in CACHE_HEADERS:
        if name in recorded["headers"]:
            assert ours.get(name) == recorded["headers"][name], (name, ours.get(name))
    if computed:
        assert_same_computed_body(answer_body, body(recorded))
    else:
        assert answer_body == body(recorded), (answer_body, body(recorded))


def assert_same_computed_body(ours: bytes, theirs: bytes) -> None:
    """Ours equals TorchServe's byte for byte (as it does on the machine that recorded it),
    or, where this CPU's float kernels round a computed number (a softmax, an attribution)
    otherwise in its last bits, as JSON whose every float is within FLOAT_REL_TOL of
    TorchServe's and every other value equal."""
    if ours == theirs:
        return
    try:
        mine, recorded = json.loads(ours), json.loads(theirs)
    except ValueError:
        raise AssertionError(first_difference(ours, theirs)) from None
    _assert_close(mine, recorded, "body", first_difference(ours, theirs))


def _assert_close(mine, recorded, where: str, context: str) -> None:
    if isinstance(recorded, float) and isinstance(mine, (float, int)):
        assert math.isclose(mine, recorded, rel_tol=FLOAT_REL_TOL, abs_tol=FLOAT_ABS_TOL), (
            where, mine, recorded, context)
    elif isinstance(recorded, list) and isinstance(mine, list):
        assert len(mine) == len(recorded), (where, len(mine), len(recorded), context)
        for index, (one, other) in enumerate(zip(mine, recorded, strict=True)):
            _assert_close(one, other, f"{where}[{index}]", context)
    elif isinstance(recorded, dict) and isinstance(mine, dict):
        assert list(mine) == list(recorded), (where, list(mine), list(recorded), context)
        for key in recorded:
            _assert_close(mine[key], recorded[key], f"{where}[{key!r}]", context)
    else:
        assert mine == recorded, (where, mine, recorded, context)


def first_difference(ours: bytes, theirs: bytes) -> str:
    """Where two bodies first differ, with some bytes around it."""
    for index, (mine, recorded) in enumerate(zip(ours, theirs, strict=False)):
        if mine != recorded:
            return (f"first difference at byte {index}: ours {ours[index - 60:index + 60]!r}, "
                    f"TorchServe's {theirs[index - 60:index + 60]!r}")
    return f"lengths differ: ours {len(ours)}, TorchServe's {len(theirs)}"
