"""Entry point of one HTTP front-end process: the inference app on uvicorn (uvloop, httptools,
writes coalesced per event-loop turn: api/http_protocol.py).

    python -P -m zerobatch.api.frontend --config '<FrontendConfig JSON>' [--fd N]

With --fd N the process serves on a listening socket it inherited, already bound by the
broker (which binds the port once and hands the same socket to every front end: pre-fork);
without it, the process binds config.host:config.port itself. The app's AsyncClient to
config.broker_address is made at lifespan startup inside the server's loop and closed at
shutdown. SIGTERM or SIGINT: stop accepting, finish in-flight requests, exit 0.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import socket
import sys

import uvicorn

from zerobatch.api.http_app import create_app
from zerobatch.api.http_protocol import CoalescingHttpToolsProtocol
from zerobatch.config import FrontendConfig
from zerobatch.errors import ConfigError
from zerobatch.gc_policy import freeze_startup_objects

log = logging.getLogger("zerobatch.frontend")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -P -m zerobatch.api.frontend",
                                     description="one zerobatch HTTP front-end process")
    parser.add_argument("--config", required=True, help="FrontendConfig as JSON")
    parser.add_argument("--fd", type=int, default=None,
                        help="serve on this inherited, bound, listening socket")
    return parser.parse_args(argv)


def build_server(config: FrontendConfig, fd: int | None) -> tuple[uvicorn.Server, list | None]:
    """The uvicorn server for config, and the inherited socket list to run it on (or None)."""
    uv_config = uvicorn.Config(
        create_app(config),
        host=config.host,
        port=config.port,
        loop="uvloop",
        # httptools, one write per connection per loop turn, early 413 for 100-continue,
        # 408 for a client too slow to send its request
        http=functools.partial(CoalescingHttpToolsProtocol,
                               max_body_bytes=config.max_request_bytes,
                               read_timeout_s=config.request_read_timeout_s),
        lifespan="on",
        access_log=False,
        log_level=config.log_level.lower(),
        log_config=None,
        server_header=False,
        proxy_headers=False,  # nothing here reads the client address: skip that middleware
    )
    sockets = None
    if fd is not None:
        # socket(fileno=) reads the real family; uvicorn's own fd= path assumes AF_UNIX,
        # which would cost a TCP socket its TCP_NODELAY under uvloop.
        sockets = [socket.socket(fileno=fd)]
    return uvicorn.Server(uv_config), sockets


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = FrontendConfig.from_json(args.config)
    except (ValueError, TypeError) as exc:
        print(f"api.frontend: bad --config: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s frontend[%(process)d] %(name)s: %(message)s",
    )
    try:
        server, sockets = build_server(config, args.fd)
    except (ConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    # uvicorn re-raises the signal that stopped it once it has shut down; a graceful stop
    # should end with status 0, so the handlers it restores afterwards just ignore it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    freeze_startup_objects()  # full collections would stall the event loop (gc_policy)
    server.run(sockets=sockets)
    return 0 if server.started else 1


def _ignore(signum: int, frame: object) -> None:
    log.debug("signal %d after shutdown ignored", signum)


if __name__ == "__main__":
    sys.exit(main())
