"""Entry point of one HTTP front-end process: the inference app on uvicorn (uvloop, httptools,
writes coalesced per event-loop turn, the limits on abusive clients: api/http_protocol.py).

    python -P -m zerobatch.api.frontend --config '<FrontendConfig JSON>' [--fd N]

With --fd N the process serves on a listening socket it inherited, already bound by the
broker (which binds the port once and hands the same socket to every front end: pre-fork);
without it, the process binds config.host:config.port itself. The app's AsyncClient to
config.broker_address is made at lifespan startup inside the server's loop and closed at
shutdown. SIGTERM or SIGINT: stop accepting, finish in-flight requests, exit 0. With
config.certificate_file and config.private_key_file it serves HTTPS (api/tls.py); a pair
that cannot be loaded stops it at start with status 2.

At start the process raises its soft limit on open files (RLIMIT_NOFILE) to what
config.max_connections needs, up to the hard limit, so that a client beyond the cap is
answered 503 (and counted in the log) rather than left with an empty reply when accept()
runs out of file descriptors.
"""

from __future__ import annotations

import argparse
import functools
import logging
import resource
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

from zerobatch import logs
from zerobatch.api.http_app import create_app
from zerobatch.api.http_protocol import CoalescingHttpToolsProtocol
from zerobatch.api.tls import tls_options
from zerobatch.config import FrontendConfig, ManagementConfig, MetricsConfig
from zerobatch.errors import ConfigError
from zerobatch.gc_policy import freeze_startup_objects

log = logging.getLogger("zerobatch.frontend")

#: File descriptors a front end needs besides its open connections: the listening socket,
#: the broker's ZeroMQ sockets and their threads' pipes, the event loop's, the log; and the
#: connections it accepts only to refuse them.
FD_MARGIN = 256


#: what TorchServe's front end (NettyUtils) sends on every answer of its inference and
#: management APIs: nothing in between may cache one (a GET /predictions is a prediction too)
TORCHSERVE_ANSWER_HEADERS = (("cache-control", "no-cache; no-store, must-revalidate, private"),
                             ("expires", "Thu, 01 Jan 1970 00:00:00 UTC"),
                             ("pragma", "no-cache"))


def build_server(config: FrontendConfig, fd: int | None) -> tuple[uvicorn.Server, list | None]:
    """The uvicorn server for config, and the inherited socket list to run it on (or None)."""
    return http_server(create_app(config), config, fd, TORCHSERVE_ANSWER_HEADERS)


def http_server(app, config: FrontendConfig | ManagementConfig, fd: int | None,
                headers: tuple[tuple[str, str], ...] = ()
                ) -> tuple[uvicorn.Server, list | None]:
    """A uvicorn server of app with config's address, HTTP limits, log level and TLS (the
    front ends' and the management API's), and the inherited socket list (or None).
    `headers` go on every answer the app sends (uvicorn adds them to its head at no cost per
    request beyond writing them)."""
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        # httptools, one write per connection per loop turn, early 413 for 100-continue,
        # 408 for a client too slow to send its request, 431 for a head too large, 503 for
        # a connection over the cap
        http=functools.partial(CoalescingHttpToolsProtocol,
                               max_body_bytes=config.max_request_bytes,
                               read_timeout_s=config.request_read_timeout_s,
                               min_rate_bytes_s=config.request_min_rate_bytes_s,
                               max_header_bytes=config.max_header_bytes,
                               max_connections=config.max_connections),
        lifespan="on",
        access_log=False,
        log_level=config.log_level.lower(),
        log_config=None,
        server_header=False,
        headers=list(headers),
        proxy_headers=False,  # nothing here reads the client address: skip that middleware
        # TLS when a certificate is given: uvicorn wraps every listener in it, the inherited
        # socket too (loop.create_server(sock=..., ssl=...)); a bad file is a ConfigError
        **tls_options(config.certificate_file, config.private_key_file),
    )
    sockets = None
    if fd is not None:
        # socket(fileno=) reads the real family; uvicorn's own fd= path assumes AF_UNIX,
        # which would cost a TCP socket its TCP_NODELAY under uvloop.
        sockets = [socket.socket(fileno=fd)]
    return uvicorn.Server(uv_config), sockets


def raise_open_file_limit(connections: int) -> int:
    """Raise this process's soft limit on open files to connections + FD_MARGIN when it is
    lower, up to the hard limit (warning when that is too low); the soft limit it ends with."""
    wanted = connections + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    new_soft = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if new_soft > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, new_soft,
                        exc)
            new_soft = soft
        else:
            log.info("open file limit raised from %d to %d for max_connections %d", soft,
                     new_soft, connections)
    if new_soft < wanted:
        log.warning("the open file limit (%d) is below max_connections %d + %d for the front "
                    "end's own files: past about %d connections, new clients get no answer at "
                    "all; raise the hard limit (ulimit -Hn) or lower --max-connections",
                    new_soft, connections, FD_MARGIN, max(new_soft - FD_MARGIN, 0))
    return new_soft


def main(argv: list[str] | None = None) -> int:
    return process_main(argv, "zerobatch.api.frontend", FrontendConfig, "frontend", build_server)


def process_main(argv: list[str] | None, module: str, config_class: Any, name: str,
                 build_server: Callable[[Any, int | None], tuple[uvicorn.Server, list | None]]
                 ) -> int:
    """The entry point of a process that serves HTTP (a front end, the management or the
    metrics API): `python -P -m MODULE --config JSON [--fd N]`; run() as `name`, or 2 for a
    config that does not parse."""
    parser = argparse.ArgumentParser(prog=f"python -P -m {module}")
    parser.add_argument("--config", required=True, help=f"{config_class.__name__} as JSON")
    parser.add_argument("--fd", type=int, default=None,
                        help="serve on this inherited, bound, listening socket")
    args = parser.parse_args(argv)
    try:
        config = config_class.from_json(args.config)
    except (ValueError, TypeError) as exc:
        print(f"{module}: bad --config: {exc}", file=sys.stderr)
        return 2
    return run(config, name, lambda: build_server(config, args.fd))


def run(config: FrontendConfig | ManagementConfig | MetricsConfig, name: str,
        build: Callable[[], tuple[uvicorn.Server, list | None]]) -> int:
    """Serve until SIGTERM or SIGINT (a graceful stop, status 0), as the process `name`: the
    logging, the open-file limit for config.max_connections, then build()'s server; 2 when
    it cannot be built (a bad certificate, a socket that cannot be used)."""
    logs.configure(config.log_level, config.log_format, name)
    raise_open_file_limit(config.max_connections)
    try:
        server, sockets = build()
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
