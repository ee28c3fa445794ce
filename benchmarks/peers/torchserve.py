"""TorchServe 0.12.0 as a peer: the workload's .mar, unchanged, with TorchServe's defaults.

Installed into `.bench/venvs/torchserve`: torch 2.13.0 (CPU wheel, first), torchserve and
torch-model-archiver 0.12.0, and PyYAML, which TorchServe's Python worker imports without
declaring it (without it the worker dies in a loop and requests hang). The frontend needs
Java 17 (Debian's openjdk-17-jre-headless, installed by install() when missing).

Each serve() gets a private temp dir holding the model store, config.properties and all of
TorchServe's files: its default log4j2 logging (kept: it is what TorchServe's users run,
several lines per request) goes there through LOG_LOCATION / METRICS_LOCATION, and TMPDIR /
TEMP point there too, because the launcher keeps its pid file and the frontend its worker
sockets in the temp dir; so two TorchServes never see each other's.
The model is registered at startup from config.properties (`load_models` + `models`) with the
settings' batch size, delay and minWorkers = maxWorkers = workers, token auth off; after the
first prediction the management API is asked whether the settings took. Stopping runs
`torchserve --stop`, then stops the whole process group (launcher, JVM, Python workers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from benchmarks.common import free_port
from benchmarks.loadgen import HttpTarget
from benchmarks.peers import ModelSettings, Peer, Started, procs, venvs
from benchmarks.peers.startup import log_tail, time_first_success

if TYPE_CHECKING:
    from benchmarks.workloads import Workload

NAME = "torchserve"
VERSION = "0.12.0"
INSTALL_STEPS = [[venvs.TORCH_PIN],
                 [f"torchserve=={VERSION}", f"torch-model-archiver=={VERSION}", "pyyaml"]]
JAVA_PACKAGE = "openjdk-17-jre-headless"
JAVA_MAJOR = 17
STARTUP_TIMEOUT_S = 180.0
RESPONSE_TIMEOUT_S = 120
STOP_GRACE_S = 20.0


class TorchServePeer(Peer):
    name = NAME

    def __init__(self, startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.startup_timeout_s = startup_timeout_s

    def missing(self) -> str | None:
        if java_major() is None and not _can_apt_install():
            return (f"TorchServe needs Java {JAVA_MAJOR}: no `java` on PATH, and apt-get cannot "
                    f"install it here (run: apt-get install -y {JAVA_PACKAGE})")
        return None

    def install(self) -> None:
        if java_major() is None:
            _apt_install_java()
        venvs.ensure_venv(NAME, INSTALL_STEPS)

    def version(self) -> str | None:
        return venvs.dist_version(NAME, "torchserve")

    @contextmanager
    def serve(self, workload: Workload, settings: ModelSettings,
              env: dict[str, str]) -> Iterator[Started]:
        self.install()
        run_dir = tempfile.mkdtemp(prefix="zb-torchserve-")
        log_dir = os.path.join(run_dir, "logs")
        store = os.path.join(run_dir, "model_store")
        os.makedirs(log_dir)
        os.makedirs(store)
        log_path = os.path.join(log_dir, "console.log")
        server_env = _server_env(env, run_dir, log_dir)
        process = None
        try:
            model_name, model_version = archive_identity(workload.archive)
            mar_name = f"{model_name}.mar"
            _link_or_copy(workload.archive, os.path.join(store, mar_name))
            ports = {key: free_port() for key in ("inference", "management", "metrics")}
            config_path = os.path.join(run_dir, "config.properties")
            with open(config_path, "w") as handle:
                handle.write(config_properties(ports, store, model_name, model_version,
                                               mar_name, settings))
            target = HttpTarget(host="127.0.0.1", port=ports["inference"],
                                path=f"/predictions/{model_name}", body=workload.payload,
                                headers={"Content-Type": workload.content_type})
            argv = [venvs.venv_bin(NAME, "torchserve"), "--start", "--foreground", "--ncs",
                    "--disable-token-auth", "--ts-config", config_path, "--model-store", store]
            started_at = time.monotonic()
            process = procs.spawn(argv, env=server_env, cwd=run_dir, log_path=log_path)
            startup_s = time_first_success(target, started_at, process,
                                           timeout_s=self.startup_timeout_s, log_path=log_path)
            check_registration(ports["management"], model_name, settings, log_path)
            yield Started(name=NAME, target=target, startup_s=startup_s,
                          notes=f"raw body, Content-Type {workload.content_type}, "
                                f"POST /predictions/{model_name}; default logging")
        finally:
            if process is not None:
                _stop(process, server_env, run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)


def config_properties(ports: dict[str, int], store: str, model_name: str, model_version: str,
                      mar_name: str, settings: ModelSettings) -> str:
    """config.properties registering one model at startup with the given settings. The
    `models` entry is keyed by the archive's own name and version: TorchServe silently falls
    back to its defaults (batch size 1) for an entry that does not match."""
    models = {model_name: {model_version: {
        "defaultVersion": True,
        "marName": mar_name,
        "minWorkers": settings.workers,
        "maxWorkers": settings.workers,
        "batchSize": settings.batch_size,
        "maxBatchDelay": settings.max_batch_delay_ms,
        "responseTimeout": RESPONSE_TIMEOUT_S,
    }}}
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        f"model_store={store}",
        f"load_models={mar_name}",
        f"models={json.dumps(models)}",
        f"job_queue_size={settings.max_queue}",
        f"default_workers_per_model={settings.workers}",
        "disable_token_authorization=true",
    ]
    return "\n".join(lines) + "\n"


def archive_identity(archive: str) -> tuple[str, str]:
    """(modelName, modelVersion) from the .mar's MAR-INF/MANIFEST.json."""
    with zipfile.ZipFile(archive) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    model = manifest["model"]
    return model["modelName"], str(model.get("modelVersion", "1.0"))


def check_registration(management_port: int, model_name: str, settings: ModelSettings,
                       log_path: str) -> None:
    """Raise if TorchServe registered the model with other settings than asked for."""
    url = f"http://127.0.0.1:{management_port}/models/{model_name}"
    with urllib.request.urlopen(url, timeout=10) as response:
        described = json.loads(response.read())[0]
    wanted = {"batchSize": settings.batch_size, "maxBatchDelay": settings.max_batch_delay_ms,
              "minWorkers": settings.workers, "maxWorkers": settings.workers}
    got = {key: described.get(key) for key in wanted}
    if got != wanted:
        raise RuntimeError(f"TorchServe registered {model_name} with {got}, not {wanted}\n"
                           f"{log_tail(log_path)}")


def java_major() -> int | None:
    """The major version of `java` on PATH if it is at least JAVA_MAJOR, else None."""
    if shutil.which("java") is None:
        return None
    result = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
    found = re.search(r'version "(\d+)', result.stderr + result.stdout)
    major = int(found.group(1)) if found else 0
    return major if major >= JAVA_MAJOR else None


def _can_apt_install() -> bool:
    return shutil.which("apt-get") is not None and os.geteuid() == 0


def _apt_install_java() -> None:
    if not _can_apt_install():
        raise RuntimeError(f"TorchServe needs Java {JAVA_MAJOR}: "
                           f"run apt-get install -y {JAVA_PACKAGE}")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", JAVA_PACKAGE]):
        subprocess.run(argv, env=apt_env, check=True, capture_output=True, timeout=900)


def _server_env(extra: dict[str, str], run_dir: str, log_dir: str) -> dict[str, str]:
    server_env = {**os.environ, **extra}
    server_env.update(TMPDIR=run_dir, TEMP=run_dir, LOG_LOCATION=log_dir,
                      METRICS_LOCATION=log_dir)
    server_env["PATH"] = os.path.dirname(venvs.venv_bin(NAME)) + os.pathsep + server_env["PATH"]
    server_env.pop("TS_CONFIG_FILE", None)  # it would override --ts-config
    return server_env


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _stop(process, server_env: dict[str, str], run_dir: str) -> None:
    """`torchserve --stop` (it finds the JVM through the pid file in our TMPDIR), then the
    process group, so that no launcher, JVM or worker is left even if --stop failed."""
    try:
        subprocess.run([venvs.venv_bin(NAME, "torchserve"), "--stop"], env=server_env,
                       cwd=run_dir, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        process.wait(STOP_GRACE_S)  # the launcher ends once the JVM has
    except subprocess.TimeoutExpired:
        pass
    procs.stop_session(process)
