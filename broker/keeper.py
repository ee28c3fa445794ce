"""The keeper of a background server: it runs the broker and restarts it after a crash.

`zerobatch start` (without --foreground) runs `python -P -m zerobatch.broker.keeper --config
'<JSON>'`, its output going to the run directory's log. The keeper takes the run directory's
keeper lock (zerobatch/run_dir.py), starts the broker as its child and waits for it. When the
broker exits with

- 0 (a requested stop), the keeper exits 0;
- a status a restart cannot fix (a bad configuration, an address in use: launch.py), the
  keeper exits with it;
- anything else (a crash, SIGKILL, the kernel's OOM killer), the keeper logs it and starts a
  new broker after a backoff that doubles from RESTART_MIN_S up to RESTART_MAX_S and starts
  over once a broker has served HEALTHY_AFTER_S. The broker's children die with it
  (PR_SET_PDEATHSIG) and the new broker starts its own; clients reconnect by themselves.

SIGTERM or SIGINT: the keeper passes SIGTERM on to the broker, waits for it and exits 0. The
keeper imports neither ZeroMQ nor torch: it stays small, and it is not what crashes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time

from zerobatch import logs, run_dir
from zerobatch.config import ServerConfig
from zerobatch.errors import ConfigError
from zerobatch.launch import EXIT_CONFIG, PERMANENT_EXITS, module_argv

log = logging.getLogger("zerobatch.keeper")

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0


class Keeper:
    """Runs `argv` (the broker) until it exits 0 or for good, or until stop() is called."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.stopping = threading.Event()
        self.child: subprocess.Popen | None = None
        self.restarts = 0

    def stop(self) -> None:
        self.stopping.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        backoff_s = RESTART_MIN_S
        while True:
            started_s = time.monotonic()
            self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL)
            if self.stopping.is_set():  # a stop that came while it started
                self.child.send_signal(signal.SIGTERM)
            status = self.child.wait()
            if status == 0 or self.stopping.is_set():
                return 0
            if status in PERMANENT_EXITS:
                log.error("the broker exited with status %d; a restart would not help",
                          status)
                return status
            if time.monotonic() - started_s >= HEALTHY_AFTER_S:
                backoff_s = RESTART_MIN_S
            how = (f"was killed by {signal.Signals(-status).name}" if status < 0
                   else f"exited with status {status}")
            log.error("the broker (pid %d) %s; restarting it in %.1f s", self.child.pid, how,
                      backoff_s)
            if self.stopping.wait(backoff_s):
                return 0
            self.restarts += 1
            backoff_s = min(backoff_s * 2, RESTART_MAX_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m zerobatch.broker.keeper")
    parser.add_argument("--config", required=True, help="ServerConfig as JSON")
    args = parser.parse_args(argv)
    try:
        config = ServerConfig.from_json(args.config)
    except (ConfigError, ValueError, TypeError) as exc:
        print(f"zerobatch keeper: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(config.log_level, config.log_format, "keeper")
    try:
        run_dir.make_private(config.run_dir)
        lock_fd = run_dir.acquire(config.run_dir, run_dir.KEEPER_LOCK)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    keeper = Keeper(module_argv("zerobatch.broker", "--config", args.config))

    def on_stop_signal(signum: int, _frame: object) -> None:
        log.info("received %s; stopping the broker", signal.Signals(signum).name)
        keeper.stop()

    signal.signal(signal.SIGTERM, on_stop_signal)
    signal.signal(signal.SIGINT, on_stop_signal)
    try:
        return keeper.run()
    finally:
        run_dir.release(lock_fd, config.run_dir, run_dir.KEEPER_LOCK)


if __name__ == "__main__":
    sys.exit(main())
