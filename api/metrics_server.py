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

import argparse
import sys

import uvicorn

from zerobatch.api.broker_control import BrokerControl
from zerobatch.api.frontend import http_server, run
from zerobatch.api.metrics_app import create_metrics_app
from zerobatch.config import MetricsConfig


def build_server(config: MetricsConfig, fd: int | None) -> tuple[uvicorn.Server, list | None]:
    control = BrokerControl(config.control_address)
    app = create_metrics_app(control, config.metrics_dir,
                             broker_timeout_ms=config.broker_timeout_ms)
    app.add_middleware(control)
    return http_server(app, config, fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m zerobatch.api.metrics_server")
    parser.add_argument("--config", required=True, help="MetricsConfig as JSON")
    parser.add_argument("--fd", type=int, default=None,
                        help="serve on this inherited, bound, listening socket")
    args = parser.parse_args(argv)
    try:
        config = MetricsConfig.from_json(args.config)
    except (ValueError, TypeError) as exc:
        print(f"api.metrics_server: bad --config: {exc}", file=sys.stderr)
        return 2
    return run(config, "metrics", lambda: build_server(config, args.fd))


if __name__ == "__main__":
    sys.exit(main())
