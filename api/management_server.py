"""Entry point of the management API's process: TorchServe's management API (api/management_app.py)
on uvicorn, over the broker's local control socket.

    python -P -m zerobatch.api.management_server --config '<ManagementConfig JSON>' [--fd N]

One process per server, started and restarted by the broker's supervisor like a front end:
with --fd N it serves on the listening socket the broker bound (so a port in use fails at
start, before any child runs), else it binds config.host:config.port itself. It talks to
the broker on RUN_DIR/control.sock, where every control call is accepted, so who may call
it is decided here: the management key of the token authorization (api/token_auth.py) when
it is on, and loopback by default. Registration extracts archives in this process (in a
thread, one at a time): the broker's loop and the inference front ends never wait for it.
The same HTTP protocol limits as the inference port apply (api/http_protocol.py), and TLS
when the management address is https://. SIGTERM or SIGINT: finish in-flight calls, exit 0.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from zerobatch.api.broker_control import BrokerControl
from zerobatch.api.frontend import TORCHSERVE_ANSWER_HEADERS, http_server, process_main
from zerobatch.api.management_app import create_management_app
from zerobatch.config import ManagementConfig

log = logging.getLogger("zerobatch.management")


def build_server(config: ManagementConfig, fd: int | None
                 ) -> tuple[uvicorn.Server, list | None]:
    control = BrokerControl(config.control_address)
    app = create_management_app(control, key_file=config.key_file,
                                token_expiration_min=config.token_expiration_min,
                                settings=config)
    app.add_middleware(control)
    return http_server(app, config, fd, TORCHSERVE_ANSWER_HEADERS)


def main(argv: list[str] | None = None) -> int:
    return process_main(argv, "zerobatch.api.management_server", ManagementConfig,
                        "management", build_server)


if __name__ == "__main__":
    sys.exit(main())
