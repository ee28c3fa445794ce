"""Entry point of the gRPC service's process: the Open Inference Protocol's
`inference.GRPCInferenceService` (api/grpc_service.py) on a grpc.aio server.

    python -P -m zerobatch.api.grpc_server --config '<GrpcConfig JSON>'

One process per server, started and restarted by the broker's supervisor when
`--grpc-address` is given (broker/supervisor.py: add_grpc, grpc_config). gRPC cannot serve on
a socket it inherits, so this process binds config.host:config.port itself, with
SO_REUSEPORT off so that a second server cannot share the port; the broker tried the port
before starting anything, so one in use fails at start. Messages larger than
max_request_bytes are refused by gRPC before they are buffered (RESOURCE_EXHAUSTED), and at
most max_concurrent_rpcs calls run at once. TLS with the server's certificate when the
address is https://. SIGTERM or SIGINT: stop accepting calls, let in-flight calls finish
(at most GRACE_S), exit 0; 2 when the port or the certificate cannot be used.

grpcio is an optional extra (`pip install zerobatch[grpc]`); without it this process
exits 2 with the command that installs it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from zerobatch import logs, metrics_dir
from zerobatch.config import GrpcConfig

log = logging.getLogger("zerobatch.grpc")

#: how long in-flight calls may finish after SIGTERM
GRACE_S = 10.0
MISSING_GRPC = ("the gRPC service needs grpcio and protobuf: pip install 'zerobatch[grpc]' "
                "(or run without --grpc-address)")


async def serve(config: GrpcConfig) -> int:
    """Serve until SIGTERM or SIGINT; the exit status."""
    import grpc

    from zerobatch.api.aio_client import AsyncClient
    from zerobatch.api.grpc_service import InferenceService

    metrics = None
    if os.environ.get(metrics_dir.ENV_VAR):  # the metrics API is on (broker/supervisor.py)
        from zerobatch.api.request_metrics import RequestMetrics
        metrics = RequestMetrics()
        metrics.start()
    service = InferenceService(lambda: AsyncClient(config.broker_address),
                               key_file=config.key_file,
                               default_timeout_ms=config.default_timeout_ms, metrics=metrics)
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0),
                 ("grpc.max_receive_message_length", config.max_request_bytes),
                 ("grpc.max_send_message_length", config.max_response_bytes)],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs)
    server.add_generic_rpc_handlers((service.handlers(),))
    address = f"{config.host}:{config.port}"
    try:
        if config.certificate_file:
            with open(config.private_key_file, "rb") as key, \
                    open(config.certificate_file, "rb") as chain:
                credentials = grpc.ssl_server_credentials([(key.read(), chain.read())])
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
        await server.start()
    except (OSError, RuntimeError) as exc:  # grpc raises RuntimeError for a port in use
        log.error("cannot serve gRPC on %s: %s", address, exc)
        return 2
    log.info("gRPC (Open Inference Protocol) on %s%s", address,
             " with TLS" if config.certificate_file else "")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(GRACE_S)
    service.close()
    if metrics is not None:
        metrics.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -P -m zerobatch.api.grpc_server")
    parser.add_argument("--config", required=True, help="GrpcConfig as JSON")
    args = parser.parse_args(argv)
    try:
        config = GrpcConfig.from_json(args.config)
    except (ValueError, TypeError) as exc:
        print(f"zerobatch.api.grpc_server: bad --config: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, config.log_format, "grpc")
    try:
        import google.protobuf  # noqa: F401
        import grpc  # noqa: F401
    except ImportError:
        log.error(MISSING_GRPC)
        return 2
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
