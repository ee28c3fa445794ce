"""Model snapshots (zerobatch/snapshot.py): TorchServe's file, written privately and whole,
pruned, found again, and read back by the config.properties reader into the same models."""

from __future__ import annotations

import json
import os
import stat

from zerobatch import snapshot, ts_config
from zerobatch.config import ModelConfig, ServerConfig


def models() -> list[tuple[ModelConfig, bool, int]]:
    return [
        (ModelConfig(name="mnist", path="/run/models/a", url="mnist.mar", workers=2,
                     max_workers=4, batch_size=8), True, 4),
        (ModelConfig(name="mnist", version="2.0", path="/run/models/b",
                     url="https://models.example/v2/mnist-2.mar?sig=1"), False, 1),
        (ModelConfig(name="local", path="/srv/local", url="file:///srv/local"), True, 1),
        (ModelConfig(name="dir", path="/srv/dir"), True, 1),
    ]


def test_the_model_table_is_torchserves_shape():
    table = snapshot.model_table(models())
    assert table["mnist"]["1.0"] == {
        "defaultVersion": True, "marName": "mnist.mar", "minWorkers": 2, "maxWorkers": 4,
        "batchSize": 8, "maxBatchDelay": 100, "responseTimeout": 120, "startupTimeout": 120,
        "runtimeType": "python"}
    # an http(s) URL restores from the file it was downloaded to; file:// from its path
    assert table["mnist"]["2.0"]["marName"] == "mnist-2.mar"
    assert table["local"]["1.0"]["marName"] == "/srv/local"
    assert table["dir"]["1.0"]["marName"] == "/srv/dir"


def test_a_saved_snapshot_reads_back_as_the_same_models(tmp_path):
    config = ServerConfig(run_dir=str(tmp_path), model_store="/store", http_port=8443,
                          enable_model_api=True, allowed_urls=(r"https://m\.example/.*",))
    path = snapshot.save(str(tmp_path), "snapshot", config, snapshot.model_table(models()),
                         now_s=1_800_000_000.123)
    assert os.path.basename(path) == "20270115080000123-snapshot.cfg"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "config").st_mode) == 0o700
    with open(path, encoding="utf-8") as handle:
        ts = ts_config.configure(ts_config.parse_properties(handle.read()), path, {})
    assert ts.settings["model_store"] == "/store"
    assert ts.settings["http_port"] == 8443
    # a restore never opens what the restoring command line did not open itself
    assert "enable_model_api" not in ts.settings and "disable_token_auth" not in ts.settings
    assert ts.settings["allowed_urls"] == (r"https://m\.example/.*",)
    saved = json.loads(ts.settings["model_snapshot"])
    assert saved["name"] == "20270115080000123-snapshot.cfg" and saved["modelCount"] == 4
    specs, settings = snapshot.models_of(ts.settings["model_snapshot"], path)
    # the default version first, so that it is the default again
    assert specs == ["mnist=mnist.mar", "mnist=mnist-2.mar", "local=/srv/local", "dir=/srv/dir"]
    assert settings["mnist"]["1.0"] == {"workers": 2, "max_workers": 4, "batch_size": 8,
                                        "max_batch_delay_ms": 100, "response_timeout_s": 120,
                                        "startup_timeout_s": 120}


def test_the_newest_snapshot_is_found_and_old_ones_are_pruned(tmp_path):
    config = ServerConfig(run_dir=str(tmp_path))
    assert snapshot.latest(str(tmp_path)) is None
    paths = [snapshot.save(str(tmp_path), "snapshot", config, {}, now_s=1_800_000_000 + i)
             for i in range(snapshot.KEEP_FILES + 5)]
    (tmp_path / "config" / "notes.txt").write_text("not a snapshot")
    assert snapshot.latest(str(tmp_path)) == paths[-1]
    kept = sorted(n for n in os.listdir(tmp_path / "config") if n.endswith(".cfg"))
    assert kept == sorted(os.path.basename(p) for p in paths[-snapshot.KEEP_FILES:])


def test_a_snapshot_that_is_not_torchserves_shape_is_refused_naming_it():
    for text in ('{"models": []}', '{"models": {"m": 1}}', '{"models": {"m": {"1.0": {}}}}'):
        try:
            snapshot.models_of(text, "x.cfg: model_snapshot")
        except ValueError as exc:
            assert str(exc).startswith("x.cfg: model_snapshot")
        else:
            raise AssertionError(f"{text} was accepted")
