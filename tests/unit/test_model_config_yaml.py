"""model-config.yaml front-end keys applied by the broker, and per-model dependencies (without
running pip): each key, precedence over the CLI's flags, bad values refused with the key
named, deviceType cpu in the supervisor, the dependency directory and its reuse."""

from __future__ import annotations

import json
import os
import sys

import pytest

from zerobatch.broker import model_yaml, py_deps
from zerobatch.broker.archive import prepare_models
from zerobatch.broker.supervisor import Supervisor
from zerobatch.config import ModelConfig, ServerConfig, WorkerConfig
from zerobatch.errors import ConfigError
from zerobatch.worker.model_dir import add_python_path

HANDLER = "def handle(data, context):\n    return data\n"


def model_dir(tmp_path, yaml_text: str | None = None, name: str = "m", **manifest_model) -> str:
    root = tmp_path / name
    (root / "MAR-INF").mkdir(parents=True)
    (root / "handler.py").write_text(HANDLER)
    manifest = {"runtime": "python", "model": {"modelName": name, "handler": "handler.py",
                                               **manifest_model}}
    (root / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    if yaml_text is not None:
        (root / manifest_model.get("configFile", "model-config.yaml")).write_text(yaml_text)
    return str(root)


def prepared(tmp_path, yaml_text: str | None, **model_fields) -> ModelConfig:
    path = model_dir(tmp_path, yaml_text)
    kept, refused = prepare_models([ModelConfig(name="m", path=path, **model_fields)],
                                   str(tmp_path / "run"))
    assert not refused, refused
    return kept[0]


def refusal(tmp_path, yaml_text: str, **model_fields) -> str:
    path = model_dir(tmp_path, yaml_text)
    kept, refused = prepare_models([ModelConfig(name="m", path=path, **model_fields)],
                                   str(tmp_path / "run"))
    assert kept == () and len(refused) == 1
    error = refused[0][1]
    assert isinstance(error, ConfigError)
    assert os.path.join(path, "model-config.yaml") in str(error)  # the file is named
    return str(error)


# ---------------------------------------------------------------------- each key

@pytest.mark.parametrize("key, value, field_name", [
    ("minWorkers", 3, "workers"),
    ("batchSize", 8, "batch_size"),
    ("maxBatchDelay", 2000, "max_batch_delay_ms"),
    ("responseTimeout", 7, "response_timeout_s"),
    ("startupTimeout", 9, "startup_timeout_s"),
    ("jobQueueSize", 33, "max_queue"),
    ("clientTimeoutInMills", 1500, "default_timeout_ms"),
])
def test_each_integer_key_sets_its_field(tmp_path, key, value, field_name):
    model = prepared(tmp_path, f"{key}: {value}\n")
    assert getattr(model, field_name) == value


def test_device_keys(tmp_path):
    model = prepared(tmp_path, "deviceType: cpu\ndeviceIds: [2, 3]\n")
    assert (model.device_type, model.device_ids) == ("cpu", (2, 3))
    assert prepared(tmp_path / "g", "deviceType: GPU\n").device_type == "gpu"


def test_a_model_without_yaml_keeps_the_cli_values(tmp_path):
    model = prepared(tmp_path, None, batch_size=4, workers=2)
    assert (model.batch_size, model.workers, model.device_type) == (4, 2, "auto")


def test_yaml_overrides_the_cli_flags_and_leaves_the_rest(tmp_path):
    model = prepared(tmp_path, "batchSize: 4\nmaxBatchDelay: 2000\nminWorkers: 2\n"
                               "handler:\n  custom: 1\n",
                     batch_size=16, max_batch_delay_ms=50, workers=1, max_queue=64,
                     response_timeout_s=30)
    assert (model.batch_size, model.max_batch_delay_ms, model.workers) == (4, 2000, 2)
    assert (model.max_queue, model.response_timeout_s) == (64, 30)  # not in the yaml


def test_max_workers_bounds_autoscaling(tmp_path):
    model = prepared(tmp_path, "minWorkers: 2\nmaxWorkers: 4\n")
    assert (model.workers, model.max_workers, model.most_workers) == (2, 4, 4)


def test_the_manifest_config_file_is_read(tmp_path):
    path = model_dir(tmp_path, "batchSize: 5\n", configFile="conf.yaml")
    kept, refused = prepare_models([ModelConfig(name="m", path=path)], str(tmp_path / "run"))
    assert not refused and kept[0].batch_size == 5


def test_empty_yaml_changes_nothing(tmp_path):
    assert prepared(tmp_path, "") == ModelConfig(name="m", path=os.path.join(tmp_path, "m"))


# ---------------------------------------------------------------------- refusals

@pytest.mark.parametrize("yaml_text, key", [
    ("batchSize: four\n", "batchSize"),
    ("batchSize: 0\n", "batchSize"),
    ("batchSize: 2.5\n", "batchSize"),
    ("minWorkers: -1\n", "minWorkers"),
    ("minWorkers: 0\n", "minWorkers"),
    ("maxBatchDelay: -5\n", "maxBatchDelay"),
    ("responseTimeout: true\n", "responseTimeout"),
    ("startupTimeout: 0\n", "startupTimeout"),
    ("clientTimeoutInMills: -1\n", "clientTimeoutInMills"),
    ("jobQueueSize: [1]\n", "jobQueueSize"),
    ("deviceType: tpu\n", "deviceType"),
    ("deviceIds: 0\n", "deviceIds"),
    ("deviceIds: [0, -1]\n", "deviceIds"),
    ("minWorkers: 3\nmaxWorkers: 2\n", "maxWorkers"),
    ("batchSize: 8\njobQueueSize: 4\n", "jobQueueSize"),
])
def test_bad_values_refuse_the_model_naming_the_key(tmp_path, yaml_text, key):
    assert key in refusal(tmp_path, yaml_text)


def test_batch_size_above_the_cli_queue_names_both(tmp_path):
    message = refusal(tmp_path, "batchSize: 200\n", max_queue=100)
    assert "batchSize (200)" in message and "--max-queue" in message


def test_a_yaml_that_is_no_mapping_is_refused(tmp_path):
    assert "YAML mapping" in refusal(tmp_path, "- 1\n- 2\n")
    assert "cannot read" in refusal(tmp_path / "b", "a: [\n")


def test_a_missing_named_config_file_is_refused(tmp_path):
    path = model_dir(tmp_path, None, configFile="missing.yaml")
    kept, refused = prepare_models([ModelConfig(name="m", path=path)], str(tmp_path / "run"))
    assert kept == () and "missing.yaml" in str(refused[0][1])


def test_one_refused_model_leaves_the_others(tmp_path):
    good = model_dir(tmp_path, "batchSize: 2\n", name="good")
    bad = model_dir(tmp_path, "batchSize: -2\n", name="bad")
    kept, refused = prepare_models([ModelConfig(name="good", path=good),
                                    ModelConfig(name="bad", path=bad)], str(tmp_path / "run"))
    assert [m.name for m in kept] == ["good"] and [m.name for m, _ in refused] == ["bad"]


# ---------------------------------------------------------------------- devices

def test_device_type_cpu_gives_every_slot_of_that_model_no_gpu():
    models = (ModelConfig(name="a", path="/x", workers=2),
              ModelConfig(name="cpu", path="/y", workers=3, device_type="cpu"),
              ModelConfig(name="pinned", path="/z", workers=2, device_type="cpu",
                          device_ids=(1,)),
              ModelConfig(name="b", path="/w", workers=2, device_type="gpu"))
    supervisor = Supervisor(ServerConfig(models=models, frontends=0), "ipc://b", "ipc://f",
                            gpu_count=2, http_fd=None)
    assert [(c.slot_name, c.gpu_id) for c in supervisor.children] == [
        ("a@1.0#0", 0), ("a@1.0#1", 1),
        ("cpu@1.0#0", None), ("cpu@1.0#1", None), ("cpu@1.0#2", None),
        ("pinned@1.0#0", None), ("pinned@1.0#1", None),
        ("b@1.0#0", 0), ("b@1.0#1", 1)]  # cpu models do not advance the round robin


def test_device_type_is_validated_and_travels_to_the_worker():
    with pytest.raises(ConfigError, match="device_type"):
        ModelConfig(name="m", path="/x", device_type="tpu")
    model = ModelConfig(name="m", path="/x", device_type="cpu", python_path=["/deps"])
    assert model.python_path == ("/deps",)
    config = WorkerConfig(worker_id="w", broker_address="ipc://b", model=model)
    assert WorkerConfig.from_json(config.to_json()).model == model
    server = ServerConfig(models=(model,), install_py_dep_per_model=True)
    assert ServerConfig.from_json(server.to_json()) == server


# ---------------------------------------------------------------------- dependencies

def test_requirements_without_the_flag_are_not_installed(tmp_path, monkeypatch):
    path = model_dir(tmp_path, None, requirementsFile="requirements.txt")
    (tmp_path / "m" / "requirements.txt").write_text("somepkg==1.0\n")
    monkeypatch.setattr(py_deps, "_pip_install", lambda *a: pytest.fail("pip ran"))
    kept, _ = prepare_models([ModelConfig(name="m", path=path)], str(tmp_path / "run"))
    assert kept[0].python_path == ()


def test_requirements_install_once_into_a_private_directory(tmp_path, monkeypatch):
    path = model_dir(tmp_path, None, requirementsFile="requirements.txt")
    (tmp_path / "m" / "requirements.txt").write_text("somepkg==1.0\n")
    calls = []

    def fake_run(argv, **_kwargs):
        calls.append(argv)
        target = argv[argv.index("--target") + 1]
        open(os.path.join(target, "somepkg.py"), "w").close()
        return py_deps.subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(py_deps.subprocess, "run", fake_run)
    run_dir = str(tmp_path / "run")
    for _ in range(2):
        kept, refused = prepare_models([ModelConfig(name="m", path=path)], run_dir,
                                       install_py_deps=True)
        assert not refused
    deps = kept[0].python_path[0]
    assert deps.startswith(os.path.join(run_dir, "deps", "m-1.0-"))
    assert os.path.isfile(os.path.join(deps, "somepkg.py"))
    assert len(calls) == 1  # reused the second time
    assert calls[0][:4] == [sys.executable, "-m", "pip", "install"]
    assert "--no-input" in calls[0] and "-r" in calls[0]
    (tmp_path / "m" / "requirements.txt").write_text("somepkg==2.0\n")
    prepare_models([ModelConfig(name="m", path=path)], run_dir, install_py_deps=True)
    assert len(calls) == 2  # changed requirements: installed again


def test_a_failing_install_refuses_the_model_with_pips_output(tmp_path, monkeypatch):
    path = model_dir(tmp_path, None, requirementsFile="requirements.txt")
    (tmp_path / "m" / "requirements.txt").write_text("nopkg==1.0\n")
    output = "\n".join(f"line {i}" for i in range(40)) + "\nERROR: No matching distribution"
    monkeypatch.setattr(py_deps.subprocess, "run", lambda argv, **_k:
                        py_deps.subprocess.CompletedProcess(argv, 1, output, ""))
    kept, refused = prepare_models([ModelConfig(name="m", path=path)], str(tmp_path / "run"),
                                   install_py_deps=True)
    message = str(refused[0][1])
    assert kept == () and "No matching distribution" in message and "line 39" in message
    assert "line 5\n" not in message  # only the end of the output
    assert not os.listdir(os.path.join(tmp_path, "run", "deps"))  # nothing half-installed


def test_a_requirements_file_outside_the_model_is_refused(tmp_path):
    path = model_dir(tmp_path, None, requirementsFile="../requirements.txt")
    (tmp_path / "requirements.txt").write_text("x\n")
    kept, refused = prepare_models([ModelConfig(name="m", path=path)], str(tmp_path / "run"),
                                   install_py_deps=True)
    assert kept == () and "outside" in str(refused[0][1])


def test_the_worker_puts_python_path_first(monkeypatch):
    monkeypatch.setattr(sys, "path", ["/a", "/site"])
    add_python_path(("/deps1", "/deps2", "/site"))
    assert sys.path == ["/deps1", "/deps2", "/site", "/a"]


def test_model_yaml_module_has_no_torch():
    assert "torch" not in model_yaml.__dict__ and "torch" not in py_deps.__dict__
