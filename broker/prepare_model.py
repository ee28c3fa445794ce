"""Prepare one model for its workers in a process of its own, for the management API.

    python -P -m zerobatch.broker.prepare_model --run-dir DIR [--install-py-deps] \
        --model '<ModelConfig JSON>'

What the broker does for the models given at start (broker/archive.py `prepare_one`: the
archive extracted under RUN_DIR/models/ with its limits, model-config.yaml applied, the
requirements installed when asked), run for a model registered while the server runs
(api/registration.py). A process of its own keeps the management API's process out of the
extraction (a hostile archive can cost this process, and only it, its limits) and keeps the
layers apart (the API does not import the broker).

Prints the prepared ModelConfig as JSON on stdout and exits 0; a model refused (a damaged or
unsafe archive, a bad model-config.yaml) prints the reason, without server paths, on stderr
and exits EXIT_REFUSED; anything else exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from zerobatch.broker import archive
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError, client_safe

EXIT_REFUSED = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m zerobatch.broker.prepare_model")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--model", required=True, help="ModelConfig as JSON")
    parser.add_argument("--install-py-deps", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="prepare_model: %(message)s")
    model = ModelConfig(**json.loads(args.model))
    try:
        prepared = archive.prepare_one(model, args.run_dir, args.install_py_deps)
    except ConfigError as exc:
        print(client_safe(str(exc)), file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(dataclasses.asdict(prepared)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
