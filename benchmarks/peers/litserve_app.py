"""LitServe serving a workload through the SAME handler file TorchServe and zerobatch run.

Runs inside LitServe's own venv (`.bench/venvs/litserve`), started by benchmarks/peers/
litserve.py; it imports nothing from this repository. The handler module is loaded from the
workload's model dir and called as TorchServe calls it: `handle(None, context)` once at
setup, then `handle(rows, context)` per batch with rows `[{"body": bytes}]` and a minimal
context (system_properties: model_dir, gpu_id None, batch_size; the archive's manifest).

LitServe takes JSON or form bodies only, so the request body arrives as a multipart form
file (field "file"); bytes results are answered raw (application/octet-stream), anything
else as LitServe's JSON. Batch size, batch timeout (seconds) and workers per device are
LitServe's own settings; everything else is LitServe's default.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import litserve as ls
from starlette.responses import Response

FORM_FIELD = "file"


class HandlerContext:
    """The part of TorchServe's Context that the shared handlers use."""

    def __init__(self, model_dir: str, batch_size: int):
        self.system_properties = {"model_dir": model_dir, "gpu_id": None,
                                  "batch_size": batch_size}
        manifest_path = os.path.join(model_dir, "MAR-INF", "MANIFEST.json")
        self.manifest = {}
        if os.path.exists(manifest_path):
            with open(manifest_path) as handle:
                self.manifest = json.load(handle)


def load_handle(model_dir: str, handler_file: str):
    """The module-level handle() of model_dir/handler_file (model_dir on sys.path, as
    TorchServe puts it, so a handler can import its siblings)."""
    sys.path.insert(0, model_dir)
    module_name = os.path.splitext(os.path.basename(handler_file))[0]
    spec = importlib.util.spec_from_file_location(module_name,
                                                  os.path.join(model_dir, handler_file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handle


class HandlerAPI(ls.LitAPI):
    def __init__(self, model_dir: str, handler_file: str, **options):
        super().__init__(**options)
        self.model_dir = model_dir
        self.handler_file = handler_file

    def setup(self, device):
        self.context = HandlerContext(self.model_dir, self.max_batch_size)
        self.handle = load_handle(self.model_dir, self.handler_file)
        self.handle(None, self.context)

    def decode_request(self, request):
        upload = request[FORM_FIELD]
        upload.file.seek(0)
        return upload.file.read()

    def predict(self, x):
        if self.max_batch_size == 1:  # LitServe passes one input, unbatched
            return self.handle([{"body": x}], self.context)[0]
        return self.handle([{"body": body} for body in x], self.context)

    def encode_response(self, output):
        if isinstance(output, (bytes, bytearray, memoryview)):
            return Response(content=bytes(output), media_type="application/octet-stream")
        return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--handler", required=True, help="handler file name in --model-dir")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout-s", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    api = HandlerAPI(args.model_dir, args.handler, max_batch_size=args.batch_size,
                     batch_timeout=args.batch_timeout_s, api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers,
                          timeout=args.timeout_s)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
