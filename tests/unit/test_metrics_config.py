"""The metrics API's settings: TorchServe's metrics_mode and metrics_config read from a
config.properties (zerobatch/ts_config.py) into ServerConfig through `zerobatch start`
(api/cli.py), an https:// metrics_address needing a certificate, and what the metrics
process is given (broker/supervisor.py metrics_config)."""

from __future__ import annotations

import os

import pytest

from tests.support.servers import TEST_MODELS
from zerobatch import ts_config
from zerobatch.api import cli
from zerobatch.broker.supervisor import metrics_config, metrics_endpoint
from zerobatch.config import MetricsConfig, ServerConfig
from zerobatch.errors import ConfigError

WHERE = "/etc/ts/config.properties"


def configure(text: str, environ: dict | None = None) -> ts_config.TsConfig:
    return ts_config.configure(ts_config.parse_properties(text), WHERE, environ or {})


def test_metrics_mode_prometheus_is_applied_quietly():
    ts = configure("metrics_mode=prometheus")
    assert ts.settings == {"metrics_mode": "prometheus"} and ts.warnings == ()


@pytest.mark.parametrize("text, mode", [("Log", "log"), (" le gacy ", "legacy")])
def test_metrics_mode_log_and_legacy_are_accepted_with_a_warning(text, mode):
    ts = configure(f"metrics_mode={text}")  # whitespace removed, any case: TorchServe's
    assert ts.settings == {"metrics_mode": mode}
    (warning,) = ts.warnings
    assert warning.startswith(f"{WHERE}: metrics_mode: {mode}: zerobatch writes no metric log")
    assert "metrics API" in warning


def test_an_unknown_metrics_mode_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="metrics_mode: must be prometheus, log or legacy"):
        configure("metrics_mode=statsd")


def test_metrics_config_is_kept_with_a_warning_about_its_ts_metrics():
    ts = configure("metrics_config=/etc/ts/metrics.yaml")
    assert ts.settings == {"metrics_config": "/etc/ts/metrics.yaml"}
    (warning,) = ts.warnings
    assert warning.startswith(f"{WHERE}: metrics_config: its model_metrics are declared")
    assert "ts_metrics are not applied" in warning


def test_metrics_settings_come_from_ts_variables_too():
    ts = configure("enable_envvars_config=true\n", {"TS_METRICS_MODE": "log",
                                                    "TS_METRICS_CONFIG": "m.yaml"})
    assert ts.settings == {"metrics_mode": "log", "metrics_config": "m.yaml"}
    assert ts_config.env_name("metrics_mode") == "TS_METRICS_MODE"


def test_the_file_settings_reach_the_server_config(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text(f"model_store={TEST_MODELS}\nload_models=echo\nmetrics_mode=log\n"
                    "metrics_config=conf/metrics.yaml\nmetrics_address=http://127.0.0.1:9102\n")
    args = cli.resolve(cli.build_parser().parse_args(["start", "--ts-config", str(path)]), {})
    config = cli.server_config(args)
    assert config.metrics_mode == "log"
    assert config.metrics_config == os.path.abspath("conf/metrics.yaml")
    assert config.metrics_address == "http://127.0.0.1:9102" and config.serves_metrics
    assert ServerConfig.from_json(config.to_json()) == config
    defaults = cli.server_config(cli.resolve(cli.build_parser().parse_args(
        ["start", "--model-store", TEST_MODELS, "--models", "echo"]), {}))
    assert (defaults.metrics_mode, defaults.metrics_config) == ("prometheus", "")
    assert defaults.metrics_address == "http://127.0.0.1:8082"


def test_an_https_metrics_address_needs_a_certificate():
    with pytest.raises(ConfigError, match="metrics_address: https:// needs a certificate"):
        ServerConfig(metrics_address="https://127.0.0.1:8445")
    ServerConfig(metrics_address="https://127.0.0.1:8445", certificate_file="c.pem",
                 private_key_file="k.pem")
    with pytest.raises(ConfigError, match="metrics_mode"):
        ServerConfig(metrics_mode="statsd")


def test_the_metrics_process_gets_the_address_folder_limits_and_tls_only_for_https():
    config = ServerConfig(run_dir="/run/zb", metrics_address="HTTPS://0.0.0.0",
                          certificate_file="/c.pem", private_key_file="/k.pem",
                          max_connections=10, log_level="DEBUG", log_format="json")
    assert metrics_endpoint(config) == (True, "0.0.0.0", 8445)  # TorchServe's https port
    given = metrics_config(config)
    assert (given.host, given.port, given.metrics_dir) == ("0.0.0.0", 8445, "/run/zb/metrics")
    assert given.control_address == "ipc:///run/zb/control.sock"
    assert (given.certificate_file, given.private_key_file) == ("/c.pem", "/k.pem")
    assert (given.max_connections, given.log_level, given.log_format) == (10, "DEBUG", "json")
    assert MetricsConfig.from_json(given.to_json()) == given
    plain = metrics_config(ServerConfig(run_dir="/run/zb", certificate_file="/c.pem",
                                        private_key_file="/k.pem", inference_https=True))
    assert (plain.port, plain.certificate_file) == (8082, "")
