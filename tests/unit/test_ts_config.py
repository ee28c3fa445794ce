"""TorchServe's config.properties (zerobatch/ts_config.py) and its place in `zerobatch start`
(api/cli.py) and `zerobatch-torchserve` (api/torchserve_cli.py): the Java properties syntax,
the keys applied, stored and warned about, the TS_* variables, and the precedence
flags > environment > file > defaults. No sockets, no processes."""

from __future__ import annotations

import argparse
import os
import shutil

import pytest

from tests.support.servers import TEST_MODELS
from zerobatch import config as defaults
from zerobatch import ts_config
from zerobatch.api import cli, torchserve_cli
from zerobatch.errors import ConfigError

parse = ts_config.parse_properties


# ---------------------------------------------------------------------- the syntax

@pytest.mark.parametrize("line, key, value", [
    ("a=1", "a", "1"),
    ("a:1", "a", "1"),
    ("a 1", "a", "1"),
    ("a = 1", "a", "1"),
    ("a   :  1", "a", "1"),
    ("  a=1", "a", "1"),           # leading whitespace goes
    ("a\t=\f1", "a", "1"),
    ("a==1", "a", "=1"),           # one separator, the second '=' is the value's
    ("a=1 ", "a", "1 "),           # trailing whitespace stays, as in Java
    ("a", "a", ""),
    ("a=", "a", ""),
    ("a=1 # not a comment", "a", "1 # not a comment"),
    ("a=x=y:z", "a", "x=y:z"),
    (r"a\=b=c", "a=b", "c"),       # escaped separators belong to the key
    (r"a\:b:c", "a:b", "c"),
    (r"a\ b c", "a b", "c"),
    (r"a=tab\there", "a", "tab\there"),
    (r"a=\n\r\f", "a", "\n\r\f"),
    (r"a=\q", "a", "q"),           # an unknown escape is the character itself
    (r"a=c:\\dir", "a", "c:\\dir"),
    (r"a=\u00e9t\u00C9", "a", "étÉ"),
    (r"a=\ud83d\ude00", "a", "\U0001F600"),  # a UTF-16 surrogate pair
])
def test_one_line(line, key, value):
    assert parse(line) == {key: value}


def test_comments_blank_lines_and_line_endings():
    text = "# comment\n! also a comment\n   # indented comment\n\n   \na=1\r\nb=2\rc=3\n"
    assert parse(text) == {"a": "1", "b": "2", "c": "3"}


def test_a_later_key_wins():
    assert parse("a=1\na=2") == {"a": "2"}


def test_continuation_lines():
    assert parse("a=one, \\\n    two, \\\n\tthree\nb=4") == {"a": "one, two, three", "b": "4"}
    # an even number of backslashes is an escaped backslash, not a continuation
    assert parse("a=x\\\\\nb=y") == {"a": "x\\", "b": "y"}
    assert parse("a=x\\\\\\\n y") == {"a": "x\\y"}
    # a continued line that starts with # is part of the value, not a comment
    assert parse("a=1\\\n#2") == {"a": "1#2"}
    # a comment ending in a backslash does not swallow the next line
    assert parse("# note \\\na=1") == {"a": "1"}
    # a blank (or blank-looking) line ends the logical line it would continue
    assert parse("a=1\\\n\nb=2") == {"a": "1", "b": "2"}
    assert parse("a=1\\\n   \nb=2") == {"a": "1", "b": "2"}
    # a file ending on a continuation drops the backslash
    assert parse("a=1\\") == {"a": "1"}


def test_java_corner_cases():
    """What JDK 17's Properties.load does (checked against it, with 30,000 random texts of
    these characters): a continuation that kept nothing leaves a new line, where `#` and `!`
    start comments; a lone backslash ending the file is an empty key, unless its line ended
    in CR LF."""
    assert parse("\\\n#c\na=1") == {"a": "1"}
    assert parse("\\\n  \n!x\nb=2") == {"b": "2"}
    assert parse("a=1\n\\") == {"": "", "a": "1"}
    assert parse("a=1\n\\\n") == {"": "", "a": "1"}
    assert parse("a=1\n\\\r\n") == {"a": "1"}


def test_the_models_json_of_torchserve_docs_parses():
    text = ('models={\\\n  "noop": {\\\n    "1.0": {\\\n        "defaultVersion": true,\\\n'
            '        "marName": "noop.mar",\\\n        "batchSize": 4\\\n    }\\\n  }\\\n}\n')
    props = parse(text)
    assert props["models"] == ('{"noop": {"1.0": {"defaultVersion": true,"marName": '
                               '"noop.mar","batchSize": 4}}}')


def test_malformed_unicode_escape_names_the_file_and_key(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("job_queue_size=\\u12\n")
    with pytest.raises(ConfigError, match=r"config\.properties: job_queue_size: malformed"):
        ts_config.load(str(path), {})


def test_decoding_is_utf8_else_latin1():
    assert ts_config.decode("é".encode()) == "é"
    assert ts_config.decode("é".encode("latin-1")) == "é"


def test_an_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the TorchServe configuration") as info:
        ts_config.load(str(tmp_path / "missing.properties"), {})
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------- the keys

def configure(text: str, environ: dict | None = None) -> ts_config.TsConfig:
    return ts_config.configure(parse(text), "/etc/ts/config.properties", environ or {})


def test_applied_keys_map_onto_zerobatch_settings():
    ts = configure("""
inference_address=http://0.0.0.0:8085
model_store=/srv/models
load_models=a.mar, b=b.mar,,c
default_workers_per_model=3
number_of_gpu=0
job_queue_size=7
max_request_size=1000
default_response_timeout=30
install_py_dep_per_model=TRUE
""")
    assert ts.settings == {
        "host": "0.0.0.0", "http_port": 8085, "model_store": "/srv/models",
        "models": ["a.mar", "b=b.mar", "c"], "workers": 3, "number_of_gpu": 0, "max_queue": 7,
        "max_request_size": 1000, "response_timeout": 30, "install_py_dep_per_model": True}
    assert ts.warnings == ()


def test_stored_keys_keep_their_values():
    ts = configure("""
management_address=http://0.0.0.0
metrics_address=http://127.0.0.1:9102
max_response_size=123
allowed_urls=https://s3.amazonaws.com/.*,file:///srv/.*
disable_token_authorization=true
enable_model_api=true
default_startup_timeout=300
model_snapshot={"name": "s", "modelCount": 0, "models": {}}
""")
    assert ts.settings == {
        "management_address": "http://0.0.0.0:8081",  # TorchServe's port when none is given
        "metrics_address": "http://127.0.0.1:9102", "max_response_bytes": 123,
        "allowed_urls": ("https://s3.amazonaws.com/.*", "file:///srv/.*"),
        "disable_token_auth": True, "enable_model_api": True, "startup_timeout_s": 300,
        "model_snapshot": '{"name": "s", "modelCount": 0, "models": {}}'}


def test_an_address_without_a_port_gets_torchserves_default():
    assert configure("inference_address=http://localhost").settings["http_port"] == 80
    assert configure("inference_address=HTTP://h:1").settings == {"host": "h", "http_port": 1}


@pytest.mark.parametrize("text, message", [
    ("inference_address=unix:/tmp/ts.sock", "inference_address: unix: socket addresses"),
    ("inference_address=127.0.0.1:8080", "inference_address: '127.0.0.1:8080' is not an addr"),
    ("inference_address=http://127.0.0.1:8080/", "inference_address: .* is not an address"),
    ("metrics_address=http://h:65535", "metrics_address: port 65535 must be below 65535"),
    ("job_queue_size=ten", "job_queue_size: must be an integer >= 1, got 'ten'"),
    ("job_queue_size=0", "job_queue_size: must be an integer >= 1"),
    ("max_request_size=1.5", "max_request_size: must be an integer"),
    ("max_request_size=99999999999", "max_request_size: must be an integer"),  # past Java's int
    ("number_of_gpu=-1", "number_of_gpu: must be an integer >= 0"),
    ("default_workers_per_model=-2", "default_workers_per_model: must be an integer >= 0"),
    ("install_py_dep_per_model=yes", "install_py_dep_per_model: must be true or false"),
    ("enable_envvars_config=1", "enable_envvars_config: must be true or false"),
    ("model_store=", "model_store: must not be empty"),
    ("allowed_urls=http://(", "allowed_urls: 'http://\\(' is not a regular expression"),
    ("model_snapshot={oops", "model_snapshot: not valid JSON"),
    ("models=[1]", "models: must be a JSON object"),
    ("models={oops", "models: not valid JSON"),
])
def test_a_bad_value_is_refused_naming_the_file_and_the_key(text, message):
    with pytest.raises(ConfigError, match=r"^/etc/ts/config\.properties: " + message) as info:
        configure(text)
    assert "\n" not in str(info.value)


def test_values_are_read_with_surrounding_whitespace_ignored():
    assert configure("job_queue_size = 12   ").settings == {"max_queue": 12}
    assert configure("enable_model_api= True ").settings == {"enable_model_api": True}


def test_zerobatchs_own_key_for_zerobatch_answers():
    ts = configure("zerobatch_answers=true\n")
    assert (ts.settings, ts.warnings) == ({"zerobatch_answers": True}, ())
    assert ts_config.env_name("zerobatch_answers") is None


def test_zero_default_workers_leaves_zerobatchs_default():
    # TorchServe's 0 means "one per GPU, else one per CPU"; zerobatch keeps its default of 1
    assert configure("default_workers_per_model=0").settings == {}


def test_unknown_and_unimplemented_keys_warn_once_each():
    ts = configure("vmargs=-Xmx4g\ncors_allowed_origin=*\nfrobnicate=1\nfrobnicate=2\n"
                   "job_queue_size=5")
    assert ts.warnings == (
        "/etc/ts/config.properties: vmargs: a TorchServe setting that zerobatch does not "
        "implement; ignored",
        "/etc/ts/config.properties: cors_allowed_origin: a TorchServe setting that zerobatch "
        "does not implement; ignored",
        "/etc/ts/config.properties: frobnicate: unknown key; ignored")
    assert ts.settings == {"max_queue": 5}


def test_load_models_all():
    assert ts_config.is_all(configure("load_models=ALL").settings["models"])
    assert not ts_config.is_all(["all", "x.mar"])
    assert configure("load_models=").settings["models"] == []
    entries = [("b.mar", False), ("a", True), (".hidden.mar", False), ("notes.txt", False),
               ("c.tar.gz", False), ("d.model", False), (".git", True)]
    assert ts_config.store_models(entries) == ["a", "b.mar", "c.tar.gz", "d.model"]


# ---------------------------------------------------------------------- the models JSON

def test_models_json_maps_onto_model_settings():
    ts = configure('models={"noop": {"1.0": {"defaultVersion": true, "marName": "noop.mar", '
                   '"minWorkers": 2, "maxWorkers": 2, "batchSize": 4, "maxBatchDelay": 50, '
                   '"responseTimeout": 30, "startupTimeout": 60, "runtimeType": "python"}}, '
                   '"vgg": {"2.0": {"batchSize": "8"}}}')
    assert ts.models == {
        "noop": {"1.0": {"workers": 2, "batch_size": 4, "max_batch_delay_ms": 50,
                         "response_timeout_s": 30, "startup_timeout_s": 60, "max_workers": 2}},
        "vgg": {"2.0": {"batch_size": 8}}}  # Gson reads a string of digits as a number
    assert ts.warnings == ()


def test_models_json_zero_means_the_default_as_in_torchserve():
    ts = configure('models={"m": {"1.0": {"maxBatchDelay": 0, "batchSize": 2}}}')
    assert ts.models == {"m": {"1.0": {"batch_size": 2}}}
    assert ts.warnings == ("/etc/ts/config.properties: models: m 1.0: maxBatchDelay 0 is not "
                           "above 0: the default applies, as in TorchServe",)


def test_models_json_warnings_and_refusals():
    ts = configure('models={"m": {"1.0": {"minWorkers": 1, "maxWorkers": 4, "colour": 1}}}')
    assert ts.warnings == (
        "/etc/ts/config.properties: models: m 1.0: colour is not a TorchServe model setting; "
        "ignored",)
    assert ts.models == {"m": {"1.0": {"workers": 1, "max_workers": 4}}}
    for bad, message in [
            ('{"m": 1}', "models: m: must be an object of versions"),
            ('{"m": {"1.0": []}}', "models: m 1.0: must be an object of settings"),
            ('{"m": {"1.0": {"batchSize": 2.5}}}', "models: m 1.0: batchSize: must be an int"),
            ('{"m": {"1.0": {"batchSize": true}}}', "models: m 1.0: batchSize: must be an int"),
            ('{"m": {"1.0": {"minWorkers": 3, "maxWorkers": 2}}}',
             r"models: m 1.0: maxWorkers \(2\) is smaller than minWorkers \(3\)")]:
        with pytest.raises(ConfigError, match="^/etc/ts/config.properties: " + message):
            configure("models=" + bad)


# ---------------------------------------------------------------------- the environment

def test_dollar_substitution_reads_the_environment_always():
    ts = configure("model_store=$$STORE$$/models", {"STORE": "/srv"})
    assert ts.settings == {"model_store": "/srv/models"}
    with pytest.raises(ConfigError, match=r"model_store: \$\$STORE\$\$ names an environment"):
        configure("model_store=$$STORE$$")


def test_ts_variables_apply_only_with_enable_envvars_config():
    environ = {"TS_JOB_QUEUE_SIZE": "9", "TS_INFERENCE_ADDRESS": "http://0.0.0.0:9000",
               "TS_MODELS": '{"x": {}}', "TS_NOT_A_KEY": "1"}
    assert configure("job_queue_size=7", environ).settings == {"max_queue": 7}
    ts = configure("enable_envvars_config=true\njob_queue_size=7", environ)
    assert ts.settings == {"max_queue": 9, "host": "0.0.0.0", "http_port": 9000}
    assert ts.models == {}  # `models` has no TS_* variable in TorchServe
    assert ts.warnings == ()


def test_ts_variables_cannot_enable_themselves():
    environ = {"TS_ENABLE_ENVVARS_CONFIG": "true", "TS_JOB_QUEUE_SIZE": "9"}
    assert configure("job_queue_size=7", environ).settings == {"max_queue": 7}


def test_allowed_urls_from_the_environment_needs_use_env_allowed_urls():
    environ = {"TS_ALLOWED_URLS": "https://mine/.*"}
    text = "enable_envvars_config=true\nallowed_urls=file://.*"
    assert configure(text, environ).settings == {"allowed_urls": ("file://.*",)}
    assert configure(text + "\nuse_env_allowed_urls=true", environ).settings == {
        "allowed_urls": ("https://mine/.*",)}


def test_a_bad_environment_value_names_the_variable_and_the_file():
    with pytest.raises(ConfigError, match=r"^/etc/ts/config\.properties: job_queue_size \(from "
                                          r"the environment variable TS_JOB_QUEUE_SIZE\): must"):
        configure("enable_envvars_config=true", {"TS_JOB_QUEUE_SIZE": "lots"})


def test_an_unimplemented_key_from_the_environment_warns():
    ts = configure("enable_envvars_config=true", {"TS_ASYNC_LOGGING": "true"})
    assert ts.warnings == ("/etc/ts/config.properties: async_logging (from the environment "
                           "variable TS_ASYNC_LOGGING): a TorchServe setting that zerobatch does "
                           "not implement; ignored",)


def test_the_variable_names_are_configmanagers():
    assert ts_config.env_name("inference_address") == "TS_INFERENCE_ADDRESS"
    assert ts_config.env_name("disable_token_authorization") == "TS_DISABLE_TOKEN_AUTHORIZATION"
    assert ts_config.env_name("token_expiration_min") == "TS_TOKEN_EXPIRATION_TIME_MIN"
    assert ts_config.env_name("ts_open_inference_protocol") == "TS_OPEN_INFERENCE_PROTOCOL"
    for key in ("models", "model_snapshot", "enable_envvars_config", "vmargs"):
        assert ts_config.env_name(key) is None


# ---------------------------------------------------------------------- zerobatch start

@pytest.fixture
def properties(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "config.properties"
        path.write_text(text)
        return str(path)
    return write


def start_config(*flags: str, environ: dict | None = None):
    args = cli.build_parser().parse_args(["start", *flags])
    resolved = cli.resolve(args, environ or {})
    return resolved, cli.server_config(resolved)


def test_without_a_file_the_defaults_apply():
    _, config = start_config("--model-store", TEST_MODELS, "--models", "echo")
    assert (config.host, config.http_port) == (defaults.DEFAULT_HOST, defaults.DEFAULT_HTTP_PORT)
    assert config.max_request_bytes == defaults.DEFAULT_MAX_BODY_BYTES
    assert config.management_address == "http://127.0.0.1:8081"
    assert config.metrics_address == "http://127.0.0.1:8082"
    assert config.allowed_urls == ("file://.*|http(s)?://.*",)
    assert not config.disable_token_authorization and not config.enable_model_api
    assert config.config_snapshots and config.model_snapshot == ""
    (model,) = config.models
    assert (model.workers, model.max_queue, model.response_timeout_s) == (1, 100, 120)


def test_precedence_flags_then_environment_then_file_then_defaults(properties):
    path = properties(f"""
enable_envvars_config=true
model_store={TEST_MODELS}
load_models=echo
job_queue_size=7
default_response_timeout=60
max_request_size=5000
inference_address=http://127.0.0.2:8090
""")
    environ = {"TS_JOB_QUEUE_SIZE": "9", "TS_DEFAULT_RESPONSE_TIMEOUT": "50"}
    _, config = start_config("--ts-config", path, "--response-timeout", "30", environ=environ)
    (model,) = config.models
    assert model.response_timeout_s == 30      # the flag beats the environment and the file
    assert model.max_queue == 9                # the environment beats the file
    assert config.max_request_bytes == 5000    # the file beats the default
    assert model.workers == defaults.DEFAULT_WORKERS  # nobody set it: the default
    assert (config.host, config.http_port) == ("127.0.0.2", 8090)
    assert config.model_store == TEST_MODELS and model.name == "echo"


def test_an_explicit_flag_equal_to_the_default_still_wins(properties):
    path = properties(f"model_store={TEST_MODELS}\nload_models=echo\njob_queue_size=7\n"
                      "inference_address=http://127.0.0.1:9000")
    _, config = start_config("--ts-config", path, "--max-queue", "100", "--http-port", "8080")
    assert config.models[0].max_queue == 100 and config.http_port == 8080


def test_flags_override_model_store_and_load_models(properties, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(os.path.join(TEST_MODELS, "echo"), store / "echo")
    path = properties(f"model_store={TEST_MODELS}\nload_models=slow")
    _, config = start_config("--ts-config", path, "--model-store", str(store),
                             "--models", "renamed=echo")
    assert [(m.name, m.path) for m in config.models] == [("renamed", str(store / "echo"))]


def test_stored_settings_reach_the_server_config(properties):
    path = properties(f"model_store={TEST_MODELS}\nload_models=echo\n"
                      "management_address=http://0.0.0.0:7081\nmax_response_size=99\n"
                      "disable_token_authorization=true\nenable_model_api=true\n"
                      "allowed_urls=file://.*\ndefault_startup_timeout=33")
    _, config = start_config("--ts-config", path, "--ncs")
    assert config.management_address == "http://0.0.0.0:7081"
    assert config.max_response_bytes == 99 and config.allowed_urls == ("file://.*",)
    assert config.disable_token_authorization and config.enable_model_api
    assert not config.config_snapshots
    assert config.models[0].startup_timeout_s == 33
    # and they survive the trip to the broker
    assert defaults.ServerConfig.from_json(config.to_json()) == config


def test_the_models_json_overrides_global_settings_for_its_model(properties, capsys):
    path = properties(f"model_store={TEST_MODELS}\nload_models=echo,batch_size_reporter\n"
                      "job_queue_size=20\n"
                      'models={"echo": {"1.0": {"batchSize": 4, "maxBatchDelay": 50}}, '
                      '"ghost": {"1.0": {"batchSize": 2}}}')
    _, config = start_config("--ts-config", path, "--batch-size", "2")
    echo, reporter = config.models
    assert (echo.batch_size, echo.max_batch_delay_ms) == (4, 50)
    assert (reporter.batch_size, reporter.max_batch_delay_ms) == (2, 100)
    assert "models: ghost 1.0 is not among the models served" in capsys.readouterr().err


def test_models_all_serves_the_stores_models(properties, tmp_path, capsys):
    store = tmp_path / "store"
    for name in ("echo", "slow"):
        shutil.copytree(os.path.join(TEST_MODELS, name), store / name)
    (store / "README.txt").write_text("not a model")
    _, config = start_config("--ts-config", properties(f"model_store={store}\nload_models=all"))
    assert sorted(m.name for m in config.models) == ["echo", "slow"]
    _, config = start_config("--model-store", str(store), "--models", "all")
    assert sorted(m.name for m in config.models) == ["echo", "slow"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _, config = start_config("--model-store", str(empty), "--models", "all")
    assert config.models == ()
    assert "no model in the model store" in capsys.readouterr().err


def test_a_bad_file_value_stops_start_with_one_line(properties, capsys):
    path = properties("job_queue_size=many\nfrobnicate=1")
    assert cli.main(["start", "--ts-config", path]) == 2
    err = capsys.readouterr().err
    assert err == f"zerobatch: error: {path}: job_queue_size: must be an integer >= 1, got 'many'\n"


def test_start_help_shows_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["start", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--ts-config FILE", "(default: .)", "(default: 127.0.0.1)",
                     "(default: 8080)", "worker processes per model (default: 1)",
                     "before 503 (default: 100)", "restarted (default: 120)",
                     "(default: 6553500, TorchServe's max_request_size)"):
        assert expected in text


# ---------------------------------------------------------------------- zerobatch-torchserve

def ts_args(*argv: str) -> argparse.Namespace:
    args, unknown = torchserve_cli.build_parser().parse_known_args(list(argv))
    args.unknown = unknown
    return args


def test_torchserve_command_line_translates_to_zerobatch_start():
    args = ts_args("--start", "--ts-config", "c.properties", "--model-store", "store",
                   "--models", "a=a.mar", "b.mar,c=c.mar", "--ncs", "--dt",
                   "--enable-model-api", "--foreground", "--run-dir", "/tmp/r")
    assert torchserve_cli.start_argv(args, "c.properties") == [
        "start", "--ts-config", "c.properties", "--model-store", "store",
        "--models", "a=a.mar", "b.mar", "c=c.mar", "--foreground", "--ncs",
        "--disable-token-auth", "--enable-model-api", "--run-dir", "/tmp/r"]
    # every translated flag is one that `zerobatch start` takes
    cli.build_parser().parse_args(torchserve_cli.start_argv(args, "c.properties"))


def test_torchserve_unknown_and_meaningless_flags_are_accepted():
    args = ts_args("--start", "--model-store", "s", "--log-config", "log4j2.xml",
                   "--ppath", "/plugins", "--some-future-flag", "--workflow-store", "w")
    assert args.unknown == ["--some-future-flag"]
    assert torchserve_cli.start_argv(args, None) == ["start", "--model-store", "s"]


def test_torchserve_config_file_is_found_as_torchserve_finds_it(tmp_path):
    args = ts_args("--ts-config", "given.properties")
    assert torchserve_cli.config_file(args, {"TS_CONFIG_FILE": "env.properties"},
                                      str(tmp_path)) == "env.properties"
    assert torchserve_cli.config_file(args, {}, str(tmp_path)) == "given.properties"
    assert torchserve_cli.config_file(ts_args(), {}, str(tmp_path)) is None
    (tmp_path / "config.properties").write_text("")
    assert torchserve_cli.config_file(ts_args(), {}, str(tmp_path)) == str(
        tmp_path / "config.properties")


def test_torchserve_missing_config_or_log_config_exit_1_as_torchserve(tmp_path, capsys):
    missing = str(tmp_path / "nope.properties")
    assert torchserve_cli.main(["--start", "--ts-config", missing]) == 1
    assert capsys.readouterr().err == f"--ts-config file not found: {missing}\n"
    assert torchserve_cli.main(["--start", "--log-config", missing]) == 1


def test_torchserve_stop_with_nothing_running_is_not_an_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    assert torchserve_cli.main(["--stop", "--run-dir", str(run_dir), "--whatever"]) == 0
    captured = capsys.readouterr()
    assert "no server is running" in captured.out
    assert "warning: ignoring what TorchServe's command line does not have" in captured.err


def test_both_commands_share_the_run_directory_default():
    start = cli.build_parser().parse_args(["start"])
    assert cli.run_dir_of(ts_args("--stop")) == cli.run_dir_of(start)
    assert cli.run_dir_of(start) == os.path.abspath(defaults.default_run_dir(os.getuid()))


def test_torchserve_start_and_stop_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        torchserve_cli.main(["--start", "--stop"])
    assert info.value.code == 2


def test_a_models_json_entry_that_breaks_a_model_names_the_file(properties):
    path = properties(f"model_store={TEST_MODELS}\nload_models=echo\njob_queue_size=2\n"
                      'models={"echo": {"1.0": {"batchSize": 8}}}')
    with pytest.raises(ConfigError, match=rf"^{path}: models: echo 1.0: .*max_queue \(2\) must "
                                          r"be at least batch_size \(8\)"):
        start_config("--ts-config", path)


# ---------------------------------------------------------------------- TLS (https://)

def test_an_https_inference_address_asks_for_tls_with_torchserves_default_port():
    assert configure("inference_address=https://127.0.0.1:8443").settings == {
        "host": "127.0.0.1", "http_port": 8443, "inference_https": True}
    assert configure("inference_address=HTTPS://h").settings == {
        "host": "h", "http_port": 443, "inference_https": True}
    assert "inference_https" not in configure("inference_address=http://h:1").settings


def test_https_management_and_metrics_addresses_are_stored_with_their_scheme():
    ts = configure("management_address=https://0.0.0.0\nmetrics_address=HTTPS://m:9\n")
    assert ts.settings == {"management_address": "https://0.0.0.0:8444",  # TorchServe's ports
                           "metrics_address": "https://m:9"}


def test_certificate_and_key_files_are_applied_and_keystores_warn_with_the_fix():
    ts = configure("certificate_file= certs/server.pem \nprivate_key_file=/etc/ts/key.pem\n"
                   "keystore=keystore.p12\nkeystore_pass=changeit\n")
    assert ts.settings == {"certificate_file": "certs/server.pem",
                           "private_key_file": "/etc/ts/key.pem"}
    assert len(ts.warnings) == 2
    for warning, key in zip(ts.warnings, ("keystore", "keystore_pass"), strict=True):
        assert warning.startswith(f"/etc/ts/config.properties: {key}: a TorchServe setting "
                                  "that zerobatch does not implement; ignored: ")
        assert "certificate_file and private_key_file" in warning and "PEM" in warning
    with pytest.raises(ConfigError, match="certificate_file: must not be empty"):
        configure("certificate_file=")
    environ = {"TS_CERTIFICATE_FILE": "/env/c.pem", "TS_PRIVATE_KEY_FILE": "/env/k.pem"}
    assert configure("enable_envvars_config=true", environ).settings == {
        "certificate_file": "/env/c.pem", "private_key_file": "/env/k.pem"}


def test_tls_flags_reach_the_server_config_as_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, config = start_config("--model-store", TEST_MODELS, "--models", "echo",
                             "--inference-https", "--certificate-file", "c.pem",
                             "--private-key-file", "k.pem")
    assert config.inference_https
    assert (config.certificate_file, config.private_key_file) == (
        str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    assert cli.inference_url(config) == f"https://127.0.0.1:{defaults.DEFAULT_HTTP_PORT}"
    assert defaults.ServerConfig.from_json(config.to_json()) == config
    _, plain = start_config("--model-store", TEST_MODELS, "--models", "echo")
    assert not plain.inference_https and plain.certificate_file == ""
    assert cli.inference_url(plain) == f"http://127.0.0.1:{defaults.DEFAULT_HTTP_PORT}"


def test_an_https_config_file_gives_tls_and_flags_win_over_it(properties, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = properties(f"model_store={TEST_MODELS}\nload_models=echo\n"
                      "inference_address=https://127.0.0.1:8443\n"
                      "management_address=https://127.0.0.1:8444\n"
                      "certificate_file=c.pem\nprivate_key_file=/keys/k.pem\n")
    _, config = start_config("--ts-config", path)
    assert config.inference_https and config.http_port == 8443
    assert config.management_address == "https://127.0.0.1:8444"
    assert (config.certificate_file, config.private_key_file) == (str(tmp_path / "c.pem"),
                                                                  "/keys/k.pem")
    _, config = start_config("--ts-config", path, "--no-inference-https",
                             "--certificate-file", "/other/c.pem")
    assert not config.inference_https and config.certificate_file == "/other/c.pem"


def test_https_without_a_certificate_is_refused_with_the_fix(properties):
    with pytest.raises(ConfigError, match="inference_address: https:// needs a certificate, "
                                          "and none is configured"):
        start_config("--model-store", TEST_MODELS, "--models", "echo", "--inference-https")
    path = properties(f"model_store={TEST_MODELS}\nload_models=echo\n"
                      "inference_address=https://127.0.0.1:8443\n")
    with pytest.raises(ConfigError, match="needs a certificate, and none is configured"):
        start_config("--ts-config", path)


def test_start_refuses_an_unreadable_certificate_before_anything_starts(tmp_path, capsys):
    key = tmp_path / "k.pem"
    key.write_text("not a key")
    run_dir = tmp_path / "run"
    assert cli.main(["start", "--model-store", TEST_MODELS, "--models", "echo",
                     "--run-dir", str(run_dir), "--inference-https",
                     "--certificate-file", str(tmp_path / "missing.pem"),
                     "--private-key-file", str(key)]) == 2
    err = capsys.readouterr().err
    assert err == (f"zerobatch: error: TLS: certificate_file {tmp_path / 'missing.pem'} cannot "
                   "be read: No such file or directory\n")
    assert not run_dir.exists()  # refused before the run directory is even made


def test_token_expiration_min_is_applied_and_checked():
    assert configure("token_expiration_min=30").settings["token_expiration_min"] == 30.0
    assert configure("token_expiration_min=0.5").settings["token_expiration_min"] == 0.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigError, match="token_expiration_min: must be a number of "
                                              "minutes above 0"):
            configure(f"token_expiration_min={bad}")
