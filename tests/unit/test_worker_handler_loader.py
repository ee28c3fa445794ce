"""Model directories and handler resolution, as TorchServe resolves `model.handler`."""

import json
import os

import pytest

from tests.models import model_path, write_model_dir
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError
from zerobatch.model_files import read_manifest
from zerobatch.worker.context import Context
from zerobatch.worker.handler_loader import load_entry_point
from zerobatch.worker.service import Service


def resolve(model_dir):
    """(entry point, context) after the initializer ran, as the worker does at load time."""
    manifest = read_manifest(str(model_dir))
    context = Context("test", str(model_dir), manifest, batch_size=2, gpu=None)
    entry, initialize = load_entry_point(str(model_dir), manifest["model"]["handler"])
    initialize(context)
    return entry, context


def run(entry, context, bodies):
    return entry([{"body": body} for body in bodies], context)


# ------------------------------------------------------------------ manifest

def test_missing_model_dir_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_manifest(str(tmp_path / "nope"))


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_manifest(str(tmp_path))
    assert os.path.join(str(tmp_path), "MAR-INF", "MANIFEST.json") in str(info.value)
    assert "not found" in str(info.value)


@pytest.mark.parametrize("text, expected", [
    ("{not json", "cannot read the manifest"),
    ('["a list"]', 'needs a "model" object'),
    ('{"model": {}}', '"model.handler" must name'),
    ('{"model": {"handler": "h.py", "serializedFile": 3}}', '"model.serializedFile" must be'),
    ('{"runtime": "LSP", "model": {"handler": "h.py"}}', "runtime 'LSP' is not supported"),
])
def test_bad_manifest_is_a_clear_error(tmp_path, text, expected):
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(text)
    with pytest.raises(ConfigError, match="MANIFEST.json") as info:
        read_manifest(str(tmp_path))
    assert expected in str(info.value)


def test_test_models_have_valid_manifests():
    for name in ("echo", "batch_size_reporter", "slow", "failing", "class_handler"):
        manifest = read_manifest(model_path(name))
        assert manifest["model"]["modelName"] == name


# ------------------------------------------------------------------ resolution

def test_module_level_handle_function_is_initialized_with_none(tmp_path):
    write_model_dir(str(tmp_path), """
        calls = []

        def handle(data, context):
            calls.append(data)
            return None if data is None else [row["body"] * 2 for row in data]
        """)
    entry, context = resolve(tmp_path)
    assert entry.__name__ == "handle"
    assert entry.__globals__["calls"] == [None]  # TorchServe's load-time call
    assert run(entry, context, [1, 2]) == [2, 4]


def test_module_colon_function(tmp_path):
    write_model_dir(str(tmp_path), """
        def handle(data, context):
            raise AssertionError("the named function wins")

        def predict(data, context):
            return None if data is None else ["predicted"] * len(data)
        """, handler="custom.py:predict")
    entry, context = resolve(tmp_path)
    assert run(entry, context, ["x"]) == ["predicted"]


def test_handler_named_without_py_suffix(tmp_path):
    write_model_dir(str(tmp_path), """
        def handle(data, context):
            return None if data is None else ["ok"] * len(data)
        """, handler="plain", file_name="plain.py")
    entry, context = resolve(tmp_path)
    assert run(entry, context, [b""]) == ["ok"]


def test_module_colon_missing_function(tmp_path):
    write_model_dir(str(tmp_path), "def handle(data, context):\n    return data\n",
                    handler="h.py:nothing_here")
    with pytest.raises(ConfigError, match="has no function 'nothing_here'"):
        resolve(tmp_path)


def test_single_class_is_instantiated_and_initialized_once(tmp_path):
    write_model_dir(str(tmp_path), """
        class Helper:
            '''Not a handler: no handle method.'''

        class MyHandler:
            instances = 0

            def __init__(self):
                MyHandler.instances += 1
                self.initialized_with = []

            def initialize(self, context):
                self.initialized_with.append(context.model_name)

            def handle(self, data, context):
                return [(self.instances, self.initialized_with) for _ in data]
        """)
    entry, context = resolve(tmp_path)
    assert type(entry.__self__).__name__ == "MyHandler"
    assert run(entry, context, ["a", "b"]) == [(1, ["test"])] * 2
    assert run(entry, context, ["c"]) == [(1, ["test"])]


def test_class_without_initialize(tmp_path):
    write_model_dir(str(tmp_path), """
        class OnlyHandle:
            def handle(self, data, context):
                return [len(data)] * len(data)
        """)
    entry, context = resolve(tmp_path)
    assert run(entry, context, [1, 2, 3]) == [3, 3, 3]


def test_imported_classes_do_not_count(tmp_path):
    write_model_dir(str(tmp_path), """
        from collections import OrderedDict  # a class, but not defined here

        class Handler:
            def handle(self, data, context):
                return ["mine"] * len(data)
        """)
    entry, context = resolve(tmp_path)
    assert run(entry, context, [0]) == ["mine"]


def test_class_handler_test_model():
    entry, context = resolve(model_path("class_handler"))
    context.request_ids = {0: "r0"}
    [answer] = run(entry, context, [b"x"])
    assert answer["initialized"] is True and answer["request_id"] == "r0"


def test_two_handler_classes_are_ambiguous(tmp_path):
    write_model_dir(str(tmp_path), """
        class First:
            def handle(self, data, context):
                return data

        class Second:
            def handle(self, data, context):
                return data
        """)
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    message = str(info.value)
    assert "exactly one class with a handle method" in message
    assert "First" in message and "Second" in message


def test_no_handle_anywhere(tmp_path):
    write_model_dir(str(tmp_path), """
        class NotAHandler:
            pass

        def predict(data, context):
            return data
        """)
    with pytest.raises(ConfigError, match="classes defined: NotAHandler"):
        resolve(tmp_path)


def test_handler_class_that_needs_arguments(tmp_path):
    write_model_dir(str(tmp_path), """
        class NeedsArgs:
            def __init__(self, model):
                self.model = model

            def handle(self, data, context):
                return data
        """)
    with pytest.raises(ConfigError, match="cannot be instantiated without arguments"):
        resolve(tmp_path)


def test_import_error_is_reported_with_the_exception(tmp_path):
    write_model_dir(str(tmp_path), """
        import not_a_real_dependency_zb

        def handle(data, context):
            return data
        """, handler="broken_dep.py")
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path)
    message = str(info.value)
    assert "broken_dep.py failed to import" in message
    assert "ModuleNotFoundError: No module named 'not_a_real_dependency_zb'" in message


def test_syntax_error_is_reported(tmp_path):
    write_model_dir(str(tmp_path), "def handle(data, context)\n    return data\n",
                    handler="bad_syntax.py")
    with pytest.raises(ConfigError, match="bad_syntax.py failed to import: SyntaxError"):
        resolve(tmp_path)


def test_default_handler_names_resolve_to_our_handlers(tmp_path):
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(
        json.dumps({"model": {"handler": "image_classifier"}}))
    manifest = read_manifest(str(tmp_path))
    entry, initialize = load_entry_point(str(tmp_path), manifest["model"]["handler"])
    assert type(entry.__self__).__name__ == "ImageClassifier"
    context = Context("test", str(tmp_path), manifest, batch_size=2, gpu=None)
    with pytest.raises(ValueError, match="serializedFile"):
        initialize(context)


def test_unknown_module_name(tmp_path):
    (tmp_path / "MAR-INF").mkdir()
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(
        json.dumps({"model": {"handler": "no_such_handler_zb.py"}}))
    with pytest.raises(ConfigError, match="no file no_such_handler_zb.py in"):
        resolve(tmp_path)


def test_handler_may_import_its_siblings(tmp_path):
    (tmp_path / "helpers_zb_sibling.py").write_text("FACTOR = 3\n")
    write_model_dir(str(tmp_path), """
        from helpers_zb_sibling import FACTOR

        def handle(data, context):
            return None if data is None else [row["body"] * FACTOR for row in data]
        """)
    service = Service.load(ModelConfig("sib", str(tmp_path)))
    assert service.entry_point([{"body": 2}], service.context) == [6]


def test_same_handler_file_name_in_two_models_stays_separate(tmp_path):
    for name in ("a", "b"):
        write_model_dir(str(tmp_path / name), f"""
            def handle(data, context):
                return None if data is None else ["{name}"] * len(data)
            """)
    entry_a, context_a = resolve(tmp_path / "a")
    entry_b, context_b = resolve(tmp_path / "b")
    assert run(entry_a, context_a, [0]) == ["a"]
    assert run(entry_b, context_b, [0]) == ["b"]


def test_initialize_failure_is_a_config_error(tmp_path):
    write_model_dir(str(tmp_path), """
        class Handler:
            def initialize(self, context):
                raise RuntimeError("weights missing")

            def handle(self, data, context):
                return data
        """)
    with pytest.raises(ConfigError, match="failed to initialize: RuntimeError: weights missing"):
        Service.load(ModelConfig("broken", str(tmp_path)))
