"""Test models: tiny TorchServe `no-archive` model directories that import no torch.

Each directory holds `MAR-INF/MANIFEST.json` and a handler that imports no torch, so a worker
serving it starts in a fraction of a second:

- `echo`: module-level `handle`; returns each body as it came (bytes, str or decoded JSON);
- `batch_size_reporter`: returns {"batch_size": len(data), "body": <body>} for each request;
- `slow`: sleeps the largest {"sleep_ms": N} of the batch, returns {"batch_size": len(data)};
- `failing`: raises ValueError when any body contains "fail", else echoes (header
  `x-batch-size`: the size of the batch that answered);
- `class_handler`: a handler class with `initialize` and `handle`;
- `streaming`: streams three chunks per request (send_intermediate_predict_response), then
  returns a final one.

The fakes that serve them without the real broker live in tests/support/.
"""

import json
import os
import textwrap

MODELS_DIR = os.path.dirname(os.path.abspath(__file__))


def model_path(name: str) -> str:
    """The absolute path of one of the test model directories."""
    return os.path.join(MODELS_DIR, name)


def write_model_dir(root: str, source: str, handler: str = "handler.py",
                    file_name: str | None = None, model: dict | None = None) -> str:
    """Write a one-file model directory under root: handler source plus its manifest.

    `handler` is the manifest's `model.handler` (it may carry `:function`); the source is
    written to `file_name` (default: the module part of `handler`, with `.py`).
    """
    module = handler.split(":")[0]
    file_name = file_name or (module if module.endswith(".py") else module + ".py")
    os.makedirs(os.path.join(root, "MAR-INF"), exist_ok=True)
    with open(os.path.join(root, file_name), "w", encoding="utf-8") as f:
        f.write(textwrap.dedent(source))
    manifest = {
        "createdOn": "22/11/2025 00:00:00",
        "runtime": "python",
        "model": {"modelName": "test", "handler": handler, "modelVersion": "1.0", **(model or {})},
        "archiverVersion": "0.12.0",
    }
    with open(os.path.join(root, "MAR-INF", "MANIFEST.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return root
