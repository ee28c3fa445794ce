"""Entry point of the metrics API's process: TorchServe's metrics API (api/metrics_app.py) on
uvicorn, over the run directory's metrics folder and the broker's local control socket.

    python -P -m zerobatch.api.metrics_server --config '<MetricsConfig JSON>' [--fd N]

One process per server, started and restarted by the broker's supervisor like the management
API (broker/supervisor.py: add_metrics, metrics_config): with --fd N it serves on the
listening socket the broker bound (a port in use fails at start, before any child runs),
else it binds config.host:config.port itself. Each scrape reads the files the front ends and
workers write (prometheus_client's multiprocess mode, zerobatch/metrics_dir.py) and asks the
broker for its figures on RUN_DIR/control.sock (the `metrics` control call, waiting at most
config.broker_timeout_ms). No token, as in TorchServe; loopback by default. The same HTTP
protocol limits as the other ports apply (api/http_protocol.py), and TLS when the metrics
address is https://. SIGTERM or SIGINT: finish in-flight scrapes, exit 0.
"""

from __future__ import annotations

import sys

import uvicorn

from zerobatch.api.broker_control import BrokerControl
from zerobatch.api.frontend import http_server, process_main
from zerobatch.api.metrics_app import create_metrics_app
from zerobatch.config import MetricsConfig


def build_server(config: MetricsConfig, fd: int | None) -> tuple[uvicorn.Server, list | None]:
    control = BrokerControl(config.control_address)
    app = create_metrics_app(control, config.metrics_dir,
                             broker_timeout_ms=config.broker_timeout_ms)
    app.add_middleware(control)
    return http_server(app, config, fd)


def main(argv: list[str] | None = None) -> int:
    return process_main(argv, "zerobatch.api.metrics_server", MetricsConfig, "metrics",
                        build_server)


if __name__ == "__main__":
    sys.exit(main())
