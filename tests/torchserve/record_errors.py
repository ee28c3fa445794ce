"""Record TorchServe 0.12.0's answers on the inference API for the parity tests of errors and
odd results (tests/integration/test_torchserve_answers.py).

    .venv/bin/python -m tests.torchserve.record_errors

Builds the archives with TorchServe's torch-model-archiver (TORCHSERVE_BIN), serves them with
TorchServe, sends each request of `requests()` and stores the answers in
tests/data/torchserve_answers/errors.json. The tests build the same archives with the
torch-model-archiver installed next to their Python (`build_archives`) and replay the stored
requests against zerobatch.

One archive, `answers` (tests/torchserve/handlers/answers_handler.py), whose `x-case`
request header picks a failure or an odd result. TorchServe runs with a queue of one request
per model and `max_request_size` MAX_REQUEST_BYTES, so that a full queue and a body too large
are answered deterministically; the tests start zerobatch with the same limits.

An unreadable image: the `image` case runs what ts.torch_handler.vision_handler's preprocess
runs first (PIL's Image.open of the body), which raises the same exception there; the tests
send the same body to zerobatch's default image_classifier. TorchServe's own image_classifier
gave the same answer when recorded with torchvision (tests/torchserve/record_explanations.py).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import threading
import time

from tests.support.servers import free_port
from tests.support.torchserve_answers import TORCHSERVE_BIN, TorchServe, request, save

HERE = os.path.dirname(os.path.abspath(__file__))
ANSWERS_HANDLER = os.path.join(HERE, "handlers", "answers_handler.py")
#: the largest request body the servers accept (TorchServe's max_request_size)
MAX_REQUEST_BYTES = 2000
#: requests a model's queue holds (TorchServe's job_queue_size)
QUEUE_SIZE = 1
#: the handler's cases, each sent as a plain POST with its `x-case` header
HANDLER_CASES = ("raise", "memory", "cuda_oom", "cuda_error", "prediction_exception",
                 "prediction_exception_413", "count", "not_list", "none", "unserializable",
                 "stream", "exit")
URLENCODED = "application/x-www-form-urlencoded"
#: url-encoded bodies whose fields the handler answers (`x-case: fields`)
FORM_BODIES = {"form_field_without_value": b"x", "form_fields_one_without_value": b"x&y=1",
               "form_field_empty_value": b"x=", "form_field_then_ampersand": b"x&",
               "form_two_fields": b"a=1&b=2"}


def requests() -> dict[str, tuple[str, str, bytes, dict]]:
    """case name -> (method, path, body, headers), for the cases answered one at a time."""
    cases = {f"handler_{case}": ("POST", "/predictions/answers", b"x",
                                 {"x-case": case, "Content-Type": "text/plain"})
             for case in HANDLER_CASES}
    cases["handler_ok"] = ("POST", "/predictions/answers", b"hello",
                           {"Content-Type": "text/plain"})
    for name, body in FORM_BODIES.items():
        cases[name] = ("POST", "/predictions/answers", body,
                       {"x-case": "fields", "Content-Type": URLENCODED})
    cases.update({
        "unknown_model": ("POST", "/predictions/nosuch", b"x", {}),
        "unknown_model_with_version": ("POST", "/predictions/nosuch/1.0", b"x", {}),
        "unknown_version": ("POST", "/predictions/answers/9.9", b"x", {}),
        "known_version": ("POST", "/predictions/answers/1.0", b"x",
                          {"Content-Type": "text/plain"}),
        "body_too_large": ("POST", "/predictions/answers", b"x" * (MAX_REQUEST_BYTES + 1000),
                           {"Content-Type": "application/octet-stream"}),
        "no_model_named": ("POST", "/predictions", b"x", {}),
        "unknown_path": ("POST", "/nosuch", b"x", {}),
        "get_prediction": ("GET", "/predictions/answers", b"", {}),
        "delete_prediction": ("DELETE", "/predictions/answers", b"", {}),
        "image_unreadable": ("POST", "/predictions/answers", b"not an image",
                             {"x-case": "image", "Content-Type": "application/octet-stream"}),
    })
    return cases


def build_archives(archiver: str, export_dir: str) -> dict[str, str]:
    """name -> .mar path of the archives, packed by `archiver` into export_dir."""
    result = subprocess.run([archiver, "--model-name", "answers", "--version", "1.0",
                             "--export-path", export_dir, "--force", "--handler",
                             ANSWERS_HANDLER], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {result.stderr}")
    return {"answers": os.path.join(export_dir, "answers.mar")}


def record_queue_full(ts: TorchServe) -> dict:
    """TorchServe's answer to a request that finds the queue full: one request runs (the
    handler sleeps, after touching a marker file), one waits in the queue, the third is
    refused."""
    marker = os.path.join(tempfile.mkdtemp(prefix="answers-marker-"), "running")
    slow = {"x-case": "sleep", "x-marker": marker, "x-seconds": "4"}
    threads = [threading.Thread(target=request, args=(ts.inference_port, "POST",
                                                      "/predictions/answers", b"x", slow))]
    threads[0].start()
    deadline = time.monotonic() + 30
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            raise TimeoutError("the slow request did not start")
        time.sleep(0.05)
    queued = dict(slow, **{"x-marker": ""})
    threads.append(threading.Thread(target=request, args=(ts.inference_port, "POST",
                                                          "/predictions/answers", b"x", queued)))
    threads[1].start()
    time.sleep(0.5)  # the second request reaches the queue
    answer = ts.record("POST", "/predictions/answers", b"x", {"Content-Type": "text/plain"})
    for thread in threads:
        thread.join(60)
    return answer


def main() -> None:
    store = tempfile.mkdtemp(prefix="answers-store-")
    archives = build_archives(os.path.join(TORCHSERVE_BIN, "torch-model-archiver"), store)
    config = {"max_request_size": str(MAX_REQUEST_BYTES), "job_queue_size": str(QUEUE_SIZE),
              # its gRPC ports, free ones, so that another TorchServe may run meanwhile
              "grpc_inference_port": str(free_port()), "grpc_management_port": str(free_port())}
    answers = {}
    with TorchServe(store, {name: os.path.basename(path) for name, path in archives.items()},
                    config) as ts:
        for name, (method, path, body, headers) in requests().items():
            answers[name] = ts.record(method, path, body, headers)
            print(name, answers[name]["status"], base64.b64decode(answers[name]["body_b64"])[:120],
                  file=sys.stderr)
        answers["queue_full"] = record_queue_full(ts)
        print("queue_full", answers["queue_full"]["status"], file=sys.stderr)
    print(save("errors", answers))


if __name__ == "__main__":
    main()
