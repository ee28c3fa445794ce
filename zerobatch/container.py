"""The container's entrypoint: `python -m zerobatch.container` starts zerobatch in the
foreground from KServe's layout of a model, so that an InferenceService written for KServe's
TorchServe runtime can run on zerobatch with its storageUri unchanged.

KServe's storage initializer downloads the storageUri to /mnt/models, which then holds
`config/config.properties` (TorchServe's configuration) and `model-store/` (the archives it
names). This module checks that layout, failing with one line that names what is missing
(exit status 2, a problem no restart fixes), and then replaces itself (exec, same pid) with

    zerobatch start --foreground --ts-config CONFIG --model-store STORE [FLAGS...]

which itself becomes the broker: SIGTERM reaches the broker directly and stops it gracefully
(the drain of docs/architecture.md), and its exit status is the container's. It binds what
config.properties says (KServe's binds 0.0.0.0 inside the pod); zerobatch's own default stays
loopback. Paths come from the flags, else the environment, else KServe's:

    --model-dir    ZEROBATCH_MODEL_DIR    /mnt/models
    --ts-config    ZEROBATCH_TS_CONFIG    MODEL_DIR/config/config.properties
    --model-store  ZEROBATCH_MODEL_STORE  MODEL_DIR/model-store

Any other argument is passed on to `zerobatch start`, where flags win over config.properties
(e.g. `--http-port 8080` for a file written for TorchServe's runtime, which bound 8085 behind
KServe's wrapper).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from zerobatch import ts_config
from zerobatch.errors import ConfigError
from zerobatch.launch import EXIT_CONFIG, module_argv

PROG = "zerobatch-container"
#: where KServe's storage initializer puts the model (the storageUri's contents)
KSERVE_MODEL_DIR = "/mnt/models"
CONFIG_RELATIVE = os.path.join("config", "config.properties")
STORE_RELATIVE = "model-store"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class LayoutError(Exception):
    """The model directory is not laid out as KServe lays it; printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,  # a flag of `zerobatch start` is never taken for ours
        description="Start zerobatch in the foreground from KServe's model layout (other "
                    "arguments go to `zerobatch start`).")
    parser.add_argument("--model-dir", help="the model directory (ZEROBATCH_MODEL_DIR; "
                                            f"default {KSERVE_MODEL_DIR})")
    parser.add_argument("--ts-config", help="config.properties (ZEROBATCH_TS_CONFIG; default "
                                            f"MODEL_DIR/{CONFIG_RELATIVE})")
    parser.add_argument("--model-store", help="the model store (ZEROBATCH_MODEL_STORE; "
                                              f"default MODEL_DIR/{STORE_RELATIVE})")
    return parser


def layout_paths(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, str]:
    """(config.properties, model store): each from its flag, else its variable, else under
    the model directory."""
    model_dir = args.model_dir or environ.get("ZEROBATCH_MODEL_DIR") or KSERVE_MODEL_DIR
    config = (args.ts_config or environ.get("ZEROBATCH_TS_CONFIG")
              or os.path.join(model_dir, CONFIG_RELATIVE))
    store = (args.model_store or environ.get("ZEROBATCH_MODEL_STORE")
             or os.path.join(model_dir, STORE_RELATIVE))
    return os.path.abspath(config), os.path.abspath(store)


def check_layout(config: str, store: str) -> None:
    """Raise LayoutError naming the first thing missing: the config file, the model store,
    or any model in it."""
    hint = f"KServe's layout is {KSERVE_MODEL_DIR}/{CONFIG_RELATIVE} and " \
           f"{KSERVE_MODEL_DIR}/{STORE_RELATIVE}/"
    if not os.path.isfile(config):
        raise LayoutError(f"no config.properties at {config} ({hint}; --ts-config or "
                          "ZEROBATCH_TS_CONFIG for another file)")
    if not os.access(config, os.R_OK):
        raise LayoutError(f"config.properties at {config} is not readable by uid {os.getuid()}")
    if not os.path.isdir(store):
        raise LayoutError(f"no model store directory at {store} ({hint}; --model-store or "
                          "ZEROBATCH_MODEL_STORE for another directory)")
    try:
        with os.scandir(store) as entries:
            models = ts_config.store_models((e.name, e.is_dir()) for e in entries)
    except OSError as exc:
        raise LayoutError(f"model store {store} cannot be listed: {exc.strerror or exc}") \
            from None
    if not models:
        raise LayoutError(f"no model in the model store {store} (a .mar, .tar.gz or a "
                          "directory with MAR-INF/MANIFEST.json)")


def loopback_warning(config: str, flags: Sequence[str],
                     environ: Mapping[str, str]) -> str | None:
    """A warning when the inference API would listen on loopback only, which nothing outside
    the container reaches; None otherwise, or when the file does not parse (zerobatch start
    then says why)."""
    if "--host" in flags or any(flag.startswith("--host=") for flag in flags):
        return None
    try:
        host = ts_config.load(config, environ).settings.get("host", "127.0.0.1")
    except ConfigError:
        return None
    if host not in LOOPBACK_HOSTS:
        return None
    return (f"{config} binds the inference API to {host}: nothing outside the container "
            "reaches it (set inference_address=http://0.0.0.0:8080)")


def start_argv(config: str, store: str, flags: Sequence[str]) -> list[str]:
    """The command that runs `zerobatch start --foreground` on the layout."""
    return module_argv("zerobatch.api.cli", "start", "--foreground", "--ts-config", config,
                       "--model-store", store, *flags)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Check the layout and exec zerobatch; returns only when the layout is wrong."""
    argv = sys.argv[1:] if argv is None else argv
    environ = os.environ if environ is None else environ
    args, flags = build_parser().parse_known_args(argv)
    config, store = layout_paths(args, environ)
    try:
        check_layout(config, store)
    except LayoutError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    warning = loopback_warning(config, flags, environ)
    if warning:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    command = start_argv(config, store, flags)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
