"""TorchServe handler files run unchanged: `ts.*` imports resolve to zerobatch's modules."""

import json
import sys
import warnings

import pytest
import torch

import zerobatch.worker.base_handler
import zerobatch.worker.compat.handler_utils
import zerobatch.worker.compat.util
import zerobatch.worker.context
from tests.models import write_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError
from zerobatch.model_files import load_model_config as read_model_yaml_config
from zerobatch.worker.handlers import (
    image_classifier,
    image_segmenter,
    object_detector,
    text_classifier,
    vision_handler,
)
from zerobatch.worker.service import Service
from zerobatch.worker.ts_alias import TS_ALIASES, TsAliasFinder, install_ts_aliases


def run(service, items):
    frames = service.run_batch(1, items)[3:]
    return decode_answers(frames)


def save_torchscript(module, path, example):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        torch.jit.save(torch.jit.trace(module, example), path)


# ------------------------------------------------------------------ the aliases

def test_aliased_names_are_our_objects():
    install_ts_aliases()
    import ts.context
    from ts.context import Context
    from ts.handler_utils.utils import send_intermediate_predict_response
    from ts.torch_handler.base_handler import BaseHandler
    from ts.torch_handler.image_classifier import ImageClassifier
    from ts.torch_handler.image_segmenter import ImageSegmenter
    from ts.torch_handler.object_detector import ObjectDetector
    from ts.torch_handler.text_classifier import TextClassifier
    from ts.torch_handler.vision_handler import VisionHandler
    from ts.utils.util import PredictionException, load_label_mapping, map_class_to_label

    assert ts.context is zerobatch.worker.context and Context is zerobatch.worker.context.Context
    assert BaseHandler is zerobatch.worker.base_handler.BaseHandler
    assert VisionHandler is vision_handler.VisionHandler
    assert ImageClassifier is image_classifier.ImageClassifier
    assert ImageSegmenter is image_segmenter.ImageSegmenter
    assert ObjectDetector is object_detector.ObjectDetector
    assert TextClassifier is text_classifier.TextClassifier
    assert PredictionException is zerobatch.worker.compat.util.PredictionException
    assert map_class_to_label is zerobatch.worker.compat.util.map_class_to_label
    assert load_label_mapping is zerobatch.worker.compat.util.load_label_mapping
    assert (send_intermediate_predict_response
            is zerobatch.worker.compat.handler_utils.send_intermediate_predict_response)
    # the target modules keep their own identity
    assert zerobatch.worker.base_handler.__spec__.name == "zerobatch.worker.base_handler"
    assert zerobatch.worker.base_handler.__name__ == "zerobatch.worker.base_handler"


def test_every_alias_imports():
    install_ts_aliases()
    import importlib
    for name, target in TS_ALIASES.items():
        assert importlib.import_module(name) is importlib.import_module(target)


def test_install_is_idempotent():
    install_ts_aliases()
    install_ts_aliases()
    assert sum(isinstance(finder, TsAliasFinder) for finder in sys.meta_path) == 1
    assert isinstance(sys.meta_path[0], TsAliasFinder)


def test_unknown_ts_names_are_not_found():
    install_ts_aliases()
    with pytest.raises(ModuleNotFoundError):
        import ts.model_service_worker  # noqa: F401


def test_send_intermediate_predict_response_needs_a_worker_context():
    install_ts_aliases()
    from ts.handler_utils.utils import send_intermediate_predict_response
    with pytest.raises(RuntimeError, match="running zerobatch worker"):
        send_intermediate_predict_response(["x"], {0: "r"}, "Intermediate", 200, None)


# ------------------------------------------------------------------ handler files, unchanged

TS_HANDLER = """
    import torch
    from ts.torch_handler.base_handler import BaseHandler


    class DoublingHandler(BaseHandler):
        def preprocess(self, data):
            return torch.tensor([row.get("data") or row.get("body") for row in data],
                                dtype=torch.float32)

        def postprocess(self, data):
            return [{"doubled": row, "topk": self.model_yaml_config.get("handler", {})}
                    for row in data.tolist()]
"""


class Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2


def test_a_torchserve_base_handler_subclass_runs(tmp_path):
    write_model_dir(str(tmp_path), TS_HANDLER, model={"serializedFile": "model.pt"})
    save_torchscript(Doubler(), str(tmp_path / "model.pt"), torch.zeros(1, 2))
    (tmp_path / "model-config.yaml").write_text("minWorkers: 1\nhandler:\n  topk: 2\n")
    service = Service.load(ModelConfig("doubler", str(tmp_path), batch_size=4))
    replies = run(service, [item("[1, 2]"), item("[3, 4.5]")])
    assert [(r.kind, r.status) for r in replies] == [("reply", 200)] * 2
    assert [json.loads(r.body) for r in replies] == [
        {"doubled": [2.0, 4.0], "topk": {"topk": 2}},
        {"doubled": [6.0, 9.0], "topk": {"topk": 2}},
    ]
    handler = service.entry_point.__self__
    assert isinstance(handler, zerobatch.worker.base_handler.BaseHandler)
    assert handler.initialized and handler.device == torch.device("cpu")
    assert handler.model_dir == str(tmp_path)
    assert handler.manifest["model"]["serializedFile"] == "model.pt"
    assert handler.context is service.context
    assert service.context.model_yaml_config == {"minWorkers": 1, "handler": {"topk": 2}}


def test_a_module_level_handle_with_ts_context(tmp_path):
    write_model_dir(str(tmp_path), """
        import ts.context
        from ts.context import Context


        def handle(data, context):
            assert isinstance(context, Context) and isinstance(context, ts.context.Context)
            if data is None:
                return None
            return [{"model": context.model_name,
                     "limit": context.system_properties["limit_max_image_pixels"]}
                    for _ in data]
    """)
    service = Service.load(ModelConfig("ctx", str(tmp_path)))
    (reply,) = run(service, [item("1")])
    assert json.loads(reply.body) == {"model": "ctx", "limit": True}


@pytest.mark.parametrize("error_code, status", [(413, 413), (507, 507), (200, 500)])
def test_prediction_exception_answers_the_batch_with_its_status(tmp_path, error_code, status):
    write_model_dir(str(tmp_path), f"""
        from ts.utils.util import PredictionException


        def handle(data, context):
            if data is None:
                return None
            raise PredictionException("input too long", {error_code})
    """)
    service = Service.load(ModelConfig("pe", str(tmp_path), batch_size=4))
    replies = run(service, [item("1"), item("2"), item("3")])
    assert [(r.kind, r.status, r.code, r.message) for r in replies] == [
        ("error", status, "prediction_error", "input too long")] * 3


def test_prediction_exception_text():
    from zerobatch.worker.compat.util import PredictionException
    exc = PredictionException("bad input", 422)
    assert (exc.message, exc.error_code, str(exc)) == ("bad input", 422, "bad input : 422")
    assert PredictionException("x").error_code == 500


def test_timed_records_a_metric_when_profiling(tmp_path):
    write_model_dir(str(tmp_path), """
        from ts.handler_utils.timer import timed


        class Timed:
            def initialize(self, context):
                self.context = context

            @timed
            def preprocess(self, data):
                return data

            def handle(self, data, context):
                return self.preprocess([1 for _ in data])
    """)
    (tmp_path / "model-config.yaml").write_text("handler:\n  profile: true\n")
    service = Service.load(ModelConfig("timed", str(tmp_path)))
    run(service, [item("1")])
    assert "ts_handler_preprocess" in [r["name"] for r in service.context.metrics.records]


# ------------------------------------------------------------------ model-config.yaml

def manifest(**model):
    return {"model": {"handler": "h.py", **model}}


def test_model_yaml_config(tmp_path):
    assert read_model_yaml_config(str(tmp_path), manifest()) == {}
    (tmp_path / "model-config.yaml").write_text("")
    assert read_model_yaml_config(str(tmp_path), manifest()) == {}
    (tmp_path / "model-config.yaml").write_text("batchSize: 4\nhandler: {topk: 3}\n")
    assert read_model_yaml_config(str(tmp_path), manifest()) == {"batchSize": 4,
                                                                 "handler": {"topk": 3}}
    (tmp_path / "other.yaml").write_text("a: 1\n")
    assert read_model_yaml_config(str(tmp_path), manifest(configFile="other.yaml")) == {"a": 1}


def test_bad_model_yaml_config(tmp_path):
    with pytest.raises(ConfigError, match="configFile"):
        read_model_yaml_config(str(tmp_path), manifest(configFile="missing.yaml"))
    (tmp_path / "model-config.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read the model config"):
        read_model_yaml_config(str(tmp_path), manifest())
    (tmp_path / "model-config.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        read_model_yaml_config(str(tmp_path), manifest())


# ------------------------------------------------------------------ ts.utils.util

def test_map_class_to_label():
    from zerobatch.worker.compat.util import map_class_to_label
    assert map_class_to_label([[0.1, 0.9]]) == [{"0": 0.1, "1": 0.9}]
    assert map_class_to_label([[0.9, 0.1]], {"0": "cat", "1": "dog"}, [[1, 0]]) == [
        {"dog": 0.9, "cat": 0.1}]
    with pytest.raises(TypeError):
        map_class_to_label((0.1,))


def test_load_label_mapping(tmp_path):
    from zerobatch.worker.compat.util import load_label_mapping
    path = tmp_path / "index_to_name.json"
    assert load_label_mapping(str(path)) is None
    path.write_text(json.dumps({"0": ["n01440764", "tench"], "1": "goldfish"}))
    assert load_label_mapping(str(path)) == {"0": "tench", "1": "goldfish"}
    path.write_text(json.dumps({"object_type_names": ["__background__", "person"]}))
    assert load_label_mapping(str(path)) == {"0": "__background__", "1": "person"}
    path.write_text(json.dumps(["a", "b"]))
    with pytest.raises(ValueError):
        load_label_mapping(str(path))
