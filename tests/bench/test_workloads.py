"""The benchmark workloads: archives made by the real torch-model-archiver, the build cache,
the request bodies, the three handlers called directly with a minimal context, and the shape
of the batched-ceiling measurement. Behaviour only; no timing figures beyond loose lower
bounds on the sleep handler."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import zipfile

import pytest

from benchmarks.workloads import NAMES, Workload, batched_ceiling, build, payload
from benchmarks.workloads.archive import source_key
from benchmarks.workloads.handler_host import MinimalContext, load_handler


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Workload]:
    out_dir = tmp_path_factory.mktemp("workloads")
    return {name: build(name, str(out_dir)) for name in NAMES}


def manifest_of(archive: str) -> dict:
    with zipfile.ZipFile(archive) as mar:
        return json.loads(mar.read("MAR-INF/MANIFEST.json"))


@pytest.mark.parametrize("name", NAMES)
def test_build_makes_a_mar_naming_the_handler_and_its_unpacked_twin(built, name):
    workload = built[name]
    assert workload.name == name and workload.handler == f"{name}_handler.py"
    assert workload.archive.endswith(os.path.join("archives", f"{name}.mar"))
    manifest = manifest_of(workload.archive)
    assert manifest["model"]["modelName"] == name
    assert manifest["model"]["handler"] == workload.handler
    assert manifest["archiverVersion"] == "0.12.0"  # the real archiver made it
    with zipfile.ZipFile(workload.archive) as mar:
        names = set(mar.namelist())
    assert workload.handler in names
    unpacked = {os.path.relpath(os.path.join(d, f), workload.model_dir)
                for d, _, files in os.walk(workload.model_dir) for f in files}
    assert unpacked == names
    with open(os.path.join(workload.model_dir, "MAR-INF", "MANIFEST.json")) as handle:
        assert json.load(handle) == manifest


def test_model_files_travel_with_their_handlers(built):
    assert manifest_of(built["mlp"].archive)["model"]["serializedFile"] == "mlp.pt"
    assert os.path.getsize(os.path.join(built["mlp"].model_dir, "mlp.pt")) > 50_000_000
    with open(os.path.join(built["sleep"].model_dir, "sleep.json")) as handle:
        assert json.load(handle) == {"fixed_ms": 5, "per_item_ms": 0.5}


def test_a_second_build_with_the_same_sources_reuses_the_first(built):
    first = built["echo"]
    out_dir = os.path.dirname(os.path.dirname(first.archive))
    before = os.stat(first.archive).st_mtime_ns
    assert build("echo", out_dir) == first
    assert os.stat(first.archive).st_mtime_ns == before


def test_a_changed_or_broken_build_is_rebuilt(tmp_path):
    first = build("echo", str(tmp_path))
    stamp = tmp_path / "archives" / "echo.key"
    stamp.write_text("a key from other sources\n")
    before = os.stat(first.archive).st_mtime_ns
    build("echo", str(tmp_path))
    assert os.stat(first.archive).st_mtime_ns != before
    os.remove(os.path.join(first.model_dir, "MAR-INF", "MANIFEST.json"))
    assert build("echo", str(tmp_path)) == first
    assert os.path.isfile(os.path.join(first.model_dir, "MAR-INF", "MANIFEST.json"))


def test_the_cache_key_follows_the_bytes_of_the_sources(tmp_path):
    source = tmp_path / "handler.py"
    source.write_text("def handle(data, context): pass\n")
    tools = {"torch-model-archiver": "0.12.0"}
    key = source_key("echo", [str(source)], tools)
    assert source_key("echo", [str(source)], tools) == key
    assert source_key("echo", [str(source)], {"torch-model-archiver": "0.11.0"}) != key
    source.write_text("def handle(data, context): return data\n")
    assert source_key("echo", [str(source)], tools) != key


def test_unknown_workloads_are_refused_with_the_choices(tmp_path):
    with pytest.raises(ValueError, match="echo, mlp, sleep"):
        build("resnet", str(tmp_path))
    with pytest.raises(ValueError, match="echo, mlp, sleep"):
        payload("resnet")


def test_payloads_have_their_sizes_and_are_the_same_every_time(built):
    assert {name: len(built[name].payload) for name in NAMES} == \
        {"echo": 100, "mlp": 49_152, "sleep": 16}
    assert all(built[name].payload == payload(name) for name in NAMES)
    assert all(w.content_type == "application/octet-stream" for w in built.values())


def host(workload: Workload, batch_size: int = 8):
    """The handler imported from the model directory and initialized as a server would."""
    module = load_handler(workload.model_dir, workload.handler)
    context = MinimalContext(workload.model_dir, batch_size=batch_size)
    assert module.handle(None, context) is None
    return module, context


def test_echo_returns_each_body_unchanged_as_bytes(built):
    module, context = host(built["echo"])
    rows = [{"body": bytearray(b"abc")}, {"body": b""}, {"data": bytearray(b"from a form")}]
    assert module.handle(rows, context) == [b"abc", b"", b"from a form"]
    assert all(type(answer) is bytes for answer in module.handle(rows, context))


def test_mlp_answers_ten_probabilities_per_row(built):
    module, context = host(built["mlp"])
    body = built["mlp"].payload
    answers = module.handle([{"body": bytearray(body)}, {"body": body}, {"data": body}], context)
    assert len(answers) == 3
    for row in answers:
        assert len(row) == 10 and all(0.0 <= p <= 1.0 for p in row)
        assert math.isclose(sum(row), 1.0, rel_tol=1e-5)
    assert answers[1] == pytest.approx(answers[0]) and answers[2] == pytest.approx(answers[0])
    # a batch gives each row what it would get alone (one forward, rows independent)
    alone = module.handle([{"body": body}], context)
    assert alone[0] == pytest.approx(answers[0], rel=1e-4)


def test_mlp_refuses_a_body_of_the_wrong_size_with_the_expected_one(built):
    module, context = host(built["mlp"])
    with pytest.raises(ValueError, match="49152 raw bytes"):
        module.handle([{"body": bytearray(100)}], context)


def test_sleep_spends_its_configured_time_and_answers_ok(tmp_path, built):
    model_dir = tmp_path / "sleep"
    model_dir.mkdir()
    shutil.copy(os.path.join(built["sleep"].model_dir, "sleep_handler.py"), model_dir)
    (model_dir / "sleep.json").write_text('{"fixed_ms": 20, "per_item_ms": 5}')
    module = load_handler(str(model_dir), "sleep_handler.py")
    context = MinimalContext(str(model_dir), batch_size=4)
    module.handle(None, context)
    start = time.monotonic()
    assert module.handle([{"body": b"x"}] * 4, context) == [b"ok"] * 4
    assert time.monotonic() - start >= 0.039  # 20 + 4 x 5 ms; sleep never returns early


def test_sleep_defaults_to_five_ms_and_a_half_per_item(tmp_path, built):
    shutil.copy(os.path.join(built["sleep"].model_dir, "sleep_handler.py"), tmp_path)
    module = load_handler(str(tmp_path), "sleep_handler.py")
    context = MinimalContext(str(tmp_path))  # no sleep.json, no manifest
    start = time.monotonic()
    assert module.handle([{"body": b"x"}] * 2, context) == [b"ok", b"ok"]
    assert time.monotonic() - start >= 0.0059


def test_handlers_import_no_ts_and_only_mlp_imports_torch():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name in NAMES:
        path = os.path.join(root, "benchmarks", "workloads", name, f"{name}_handler.py")
        with open(path) as handle:
            imports = [line.split()[1].split(".")[0] for line in handle
                       if line.startswith(("import ", "from "))]
        assert "ts" not in imports
        assert ("torch" in imports) == (name == "mlp"), name


@pytest.mark.parametrize("name", ["echo", "mlp"])
def test_batched_ceiling_reports_forward_time_and_ceiling_per_batch_size(built, name):
    result = batched_ceiling(built[name], batch_sizes=(1, 4), repeats=3, max_s=2)
    assert set(result) == {"forward_ms", "ceiling_rps", "threads"}
    assert result["threads"] == 1
    for figures in (result["forward_ms"], result["ceiling_rps"]):
        assert set(figures) == {"1", "4"} and all(value > 0 for value in figures.values())
    assert result["ceiling_rps"]["4"] == pytest.approx(4000 / result["forward_ms"]["4"])


def test_batched_ceiling_refuses_nonsense_arguments(built):
    with pytest.raises(ValueError):
        batched_ceiling(built["echo"], batch_sizes=())
    with pytest.raises(ValueError):
        batched_ceiling(built["echo"], threads=0)
