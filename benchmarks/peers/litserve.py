"""LitServe (latest from PyPI) as a peer, serving the same handler files as the others.

Installed into `.bench/venvs/litserve`: torch 2.13.0 (CPU wheel, first), then `litserve` and
`python-multipart` (Starlette needs it to parse the form bodies LitServe is sent). The server
is benchmarks/peers/litserve_app.py run by that venv's python, with max_batch_size = batch
size, batch_timeout = the delay in seconds, workers_per_device = workers on the CPU.

LitServe decodes JSON or form bodies only, so the workload's bytes go as a multipart form file
(field "file"); the reply is the handler's raw bytes, or JSON for non-bytes results. The
request is built once here, so the load generators send exactly what the startup probe sent.
Stopping sends SIGTERM to the process group (LitServe shuts its workers down on it) and kills
what is left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from benchmarks.common import free_port
from benchmarks.loadgen import HttpTarget
from benchmarks.peers import ModelSettings, Peer, Started, procs, venvs
from benchmarks.peers.startup import time_first_success

if TYPE_CHECKING:
    from benchmarks.workloads import Workload

NAME = "litserve"
INSTALL_STEPS = [[venvs.TORCH_PIN], ["litserve", "python-multipart"]]
APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "litserve_app.py")
STARTUP_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 30.0  # LitServer's default
FORM_FIELD = "file"
BOUNDARY = "zerobatch-bench-boundary-7d3f0c"


class LitServePeer(Peer):
    name = NAME

    def __init__(self, startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.startup_timeout_s = startup_timeout_s

    def install(self) -> None:
        venvs.ensure_venv(NAME, INSTALL_STEPS)

    def version(self) -> str | None:
        return venvs.dist_version(NAME, "litserve")

    @contextmanager
    def serve(self, workload: Workload, settings: ModelSettings,
              env: dict[str, str]) -> Iterator[Started]:
        self.install()
        run_dir = tempfile.mkdtemp(prefix="zb-litserve-")
        log_path = os.path.join(run_dir, "server.log")
        process = None
        try:
            port = free_port()
            body, content_type = multipart_file(workload.payload, workload.content_type)
            target = HttpTarget(host="127.0.0.1", port=port, path="/predict", body=body,
                                headers={"Content-Type": content_type})
            # -P: the app's own folder must not go on sys.path, where this module would
            # shadow the real `litserve` package
            argv = [venvs.venv_bin(NAME), "-P", APP, "--model-dir", workload.model_dir,
                    "--handler", workload.handler, "--port", str(port),
                    "--batch-size", str(settings.batch_size),
                    "--batch-timeout-s", str(settings.max_batch_delay_ms / 1000),
                    "--workers", str(settings.workers), "--timeout-s", str(REQUEST_TIMEOUT_S)]
            server_env = {**os.environ, **env, "TMPDIR": run_dir}
            started_at = time.monotonic()
            process = procs.spawn(argv, env=server_env, cwd=run_dir, log_path=log_path)
            startup_s = time_first_success(target, started_at, process,
                                           timeout_s=self.startup_timeout_s, log_path=log_path)
            yield Started(name=NAME, target=target, startup_s=startup_s,
                          notes=f"multipart form, the body as file field '{FORM_FIELD}' "
                                f"({len(body) - len(workload.payload)} bytes of form framing); "
                                "POST /predict; raw bytes or JSON back")
        finally:
            if process is not None:
                procs.stop_session(process)
            shutil.rmtree(run_dir, ignore_errors=True)


def multipart_file(payload: bytes, content_type: str) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data request carrying payload as one file."""
    head = (f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="{FORM_FIELD}"; filename="payload.bin"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    return head + payload + tail, f"multipart/form-data; boundary={BOUNDARY}"
