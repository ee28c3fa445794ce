"""`zerobatch-torchserve`: the `torchserve` command line of TorchServe 0.12, run on zerobatch.

It takes what TorchServe's ts/arg_parser.py and ts/model_server.py take: `--start` (also what
happens with neither `--start` nor `--stop`), `--stop`, `-v/--version`, `--ts-config`,
`--model-store`, `--models` (items may also be comma lists, as TorchServe joins them into
`load_models`), `--foreground`, `--no-config-snapshots/--ncs`, `--disable-token-auth/--dt`,
`--enable-model-api`, `--log-config`, `--workflow-store`, `--plugins-path/--ppath` and
`--cpp-log-config`, and runs `zerobatch start` or `zerobatch stop` (zerobatch's run directory
default, so that `--stop` finds what `--start` started). The configuration file is found as
TorchServe finds it: `TS_CONFIG_FILE`, else `--ts-config`, else `config.properties` in the
current directory when there is one. Flags that mean nothing here, and flags it does not know,
are accepted with a one-line warning, so that scripts and container entrypoints run unchanged.
Two flags of zerobatch's own are added: `--run-dir` and `--client-address`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from zerobatch import __version__
from zerobatch.api import cli

PROG = "zerobatch-torchserve"
#: TorchServe flags accepted with no effect, and why
IGNORED_FLAGS = {
    "log_config": "--log-config (a log4j2 file): zerobatch logs to RUN_DIR/zerobatch.log",
    "workflow_store": "--workflow-store: zerobatch serves no workflows",
    "plugins_path": "--plugins-path: zerobatch loads no Java plugins",
    "cpp_log_config": "--cpp-log-config: zerobatch has no C++ backend",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="TorchServe's `torchserve` command line, served by zerobatch "
                               "(`zerobatch start --help` lists zerobatch's own flags).")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("-v", "--version", action="store_true", help="print the version")
    action.add_argument("--start", action="store_true", help="start the server (the default)")
    action.add_argument("--stop", action="store_true", help="stop the server")
    parser.add_argument("--ts-config", help="TorchServe's config.properties (TS_CONFIG_FILE, "
                                            "when set, wins)")
    parser.add_argument("--model-store", help="the model store (overrides model_store)")
    parser.add_argument("--models", nargs="+", metavar="[NAME=]PATH",
                        help="models to load (overrides load_models); `all` for the store's")
    parser.add_argument("--foreground", action="store_true", help="run in this terminal")
    parser.add_argument("--no-config-snapshots", "--ncs", dest="ncs", action="store_true",
                        help="neither save nor restore model snapshots")
    parser.add_argument("--disable-token-auth", "--dt", action="store_true",
                        help="no token authorization")
    parser.add_argument("--enable-model-api", action="store_true",
                        help="allow registering and unregistering models")
    parser.add_argument("--log-config", help="ignored, with a warning")
    parser.add_argument("--workflow-store", help="ignored, with a warning")
    parser.add_argument("--plugins-path", "--ppath", help="ignored, with a warning")
    parser.add_argument("--cpp-log-config", help="ignored, with a warning")
    parser.add_argument("--run-dir", help="zerobatch's run directory (default: "
                                          "/tmp/zerobatch-UID)")
    parser.add_argument("--client-address", help="zerobatch's ZeroMQ client endpoint "
                                                 "(default: tcp://127.0.0.1:9500)")
    return parser


def config_file(args: argparse.Namespace, environ: Mapping[str, str], cwd: str) -> str | None:
    """The config.properties TorchServe would read: TS_CONFIG_FILE, else --ts-config, else
    config.properties in cwd when it exists."""
    path = environ.get("TS_CONFIG_FILE") or args.ts_config
    if path:
        return path
    default = os.path.join(cwd, "config.properties")
    return default if os.path.isfile(default) else None


def start_argv(args: argparse.Namespace, config: str | None) -> list[str]:
    """The `zerobatch start` command line that does what args ask of `torchserve --start`."""
    argv = ["start"]
    if config:
        argv += ["--ts-config", config]
    if args.model_store:
        argv += ["--model-store", args.model_store]
    if args.models:
        argv += ["--models", *[item for spec in args.models for item in spec.split(",") if item]]
    for flag in ("foreground", "ncs", "disable_token_auth", "enable_model_api"):
        if getattr(args, flag):
            argv.append("--" + flag.replace("_", "-"))
    for option in ("run_dir", "client_address"):
        if getattr(args, option):
            argv += ["--" + option.replace("_", "-"), getattr(args, option)]
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        warn(f"ignoring what TorchServe's command line does not have either: {' '.join(unknown)}")
    if args.version:
        print(f"zerobatch {__version__} (TorchServe 0.12's command line)")
        return 0
    if args.stop:
        return stop(args)
    for dest, why in IGNORED_FLAGS.items():
        if getattr(args, dest):
            warn(f"ignoring {why}")
    if args.log_config and not os.path.isfile(args.log_config):
        print(f"--log-config file not found: {args.log_config}", file=sys.stderr)
        return 1
    config = config_file(args, os.environ, os.getcwd())
    if config and not os.path.isfile(config):
        print(f"--ts-config file not found: {config}", file=sys.stderr)
        return 1
    if config and not (os.environ.get("TS_CONFIG_FILE") or args.ts_config):
        warn(f"reading {config}, as TorchServe does when given no --ts-config")
    return cli.main(start_argv(args, config))


def stop(args: argparse.Namespace) -> int:
    """`torchserve --stop`: stop the server of the run directory; none running is no error,
    as with TorchServe."""
    directory = cli.run_dir_of(args)
    if cli.running_pid(directory) is None:
        print(f"{PROG}: no server is running from {directory}")
        return 0
    return cli.main(["stop", "--run-dir", directory])


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
