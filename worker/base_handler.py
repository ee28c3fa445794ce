"""A TorchServe-style `BaseHandler`: load the model, then preprocess -> inference -> postprocess.

`initialize(context)` loads the manifest's `serializedFile` from the model directory:

- without a `modelFile` in the manifest it is TorchScript, loaded with `torch.jit.load`;
- with one, the model file is imported, its single `torch.nn.Module` class instantiated with
  no arguments, and the state dict loaded with `torch.load(weights_only=True)`.

The model goes to `cuda:{gpu_id}` when CUDA is available and the worker has a GPU, else to
the CPU, and is put in eval mode. An `index_to_name.json` next to it becomes `self.mapping`
(read by `load_label_mapping`, as TorchServe reads it), `context.model_yaml_config` becomes
`self.model_yaml_config`. `handle(data, context)` runs the three steps on the whole batch,
inference under `torch.inference_mode()`, and dispatches as TorchServe's does: a request whose
`explain` header is "True" (the front end sets it on /explanations and KServe's `:explain`,
"False" elsewhere) runs `explain_handle(preprocessed, data)` instead of inference and
postprocess; a `describe: True` header on the first request answers `[describe_handle()]`.
The default `explain_handle` is TorchServe's: `get_insights(preprocessed, inputs, target)`
with the first row's "data" (or "body") and "target" (0 when absent). TorchServe's image and
text handlers compute insights with Captum, which zerobatch does not need: a handler without
`get_insights`, or one whose insights import a missing Captum, fails the request with a
HandlerError that says so. Where TorchServe reads the flag of the first request for the whole
batch, a batch that mixes predictions and explanations runs as two (see `handle`). The
profiler and `torch.compile` through `pt2` are not supported.

Inside a worker this class is also `ts.torch_handler.base_handler.BaseHandler` (see
`worker.ts_alias`). This module and `worker.handlers` are the worker's only torch importers;
handlers that do not need torch never load it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import torch

from zerobatch.errors import HandlerError
from zerobatch.worker.compat.util import load_label_mapping
from zerobatch.worker.handler_loader import import_handler_module

log = logging.getLogger(__name__)

LABEL_MAPPING_FILE = "index_to_name.json"
#: the package TorchServe's handlers compute insights with (an optional dependency here)
CAPTUM = "captum"


class BaseHandler:
    """Subclass it and override preprocess / inference / postprocess as needed."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, Any] | None = None
        self.device: torch.device | None = None
        self.map_location: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.model_pt_path: str | None = None
        self.model_dir: str | None = None
        self.model_yaml_config: dict[str, Any] = {}
        self.context: Any = None
        self.initialized = False
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        gpu_id = properties.get("gpu_id")
        if gpu_id is not None and torch.cuda.is_available():
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")
        self.context = context
        self.manifest = context.manifest
        model_dir = self.model_dir = properties["model_dir"]
        model_info = self.manifest["model"]
        serialized_file = model_info.get("serializedFile")
        if serialized_file:
            self.model_pt_path = os.path.join(model_dir, serialized_file)
        model_file = model_info.get("modelFile")
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
        elif self.model_pt_path:
            self.model = self._load_torchscript_model(self.model_pt_path)
        else:
            raise ValueError('the manifest names no "serializedFile" to load')
        self.model.to(self.device)
        self.model.eval()
        mapping_path = os.path.join(model_dir, LABEL_MAPPING_FILE)
        if os.path.isfile(mapping_path):
            self.mapping = load_label_mapping(mapping_path)
        self.initialized = True
        log.info("loaded %s on %s", self.model_pt_path, self.device)

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        _require_file(model_pt_path)
        with warnings.catch_warnings():
            # torch >= 2.10 deprecates TorchScript; TorchServe archives still ship it.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.",
                                    category=DeprecationWarning)
            return torch.jit.load(model_pt_path, map_location=self.device)

    def _load_pickled_model(self, model_dir: str, model_file: str,
                            model_pt_path: str | None) -> torch.nn.Module:
        module = import_handler_module(model_dir, model_file)
        classes = [obj for obj in vars(module).values()
                   if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
                   and obj.__module__ == module.__name__]
        if len(classes) != 1:
            raise ValueError(f"model file {model_file} must define exactly one torch.nn.Module "
                             f"class; found {[cls.__name__ for cls in classes] or 'none'}")
        model = classes[0]()
        if model_pt_path:
            _require_file(model_pt_path)
            state_dict = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state_dict)
        return model

    def preprocess(self, data: list) -> Any:
        return torch.as_tensor(data, device=self.device)

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    def postprocess(self, data: Any) -> list:
        return data.tolist()

    def handle(self, data: list, context: Any) -> list:
        """The batch's answers: predictions, explanations or a description (see the module
        docstring). A batch whose requests differ in their `explain` header runs as two
        sub-batches, the context narrowed to each (indices, request ids, streaming), and the
        answers are merged back in request order."""
        start_s = time.perf_counter()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            flags = [_is_true(context, index, "explain") for index in range(len(data or ()))]
            if not any(flags):
                self.explain = False
                output = self.postprocess(self.inference(self.preprocess(data)))
            elif all(flags):
                self.explain = True
                output = self._explain(data)
            else:
                output = self._mixed(data, context, flags)
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time("HandlerTime", round((time.perf_counter() - start_s) * 1000, 2),
                             None, "ms")
        return output

    def _explain(self, data: list) -> Any:
        try:
            return self.explain_handle(self.preprocess(data), data)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] != CAPTUM:
                raise
            raise HandlerError(
                "this handler's explanations need Captum, which the worker's Python lacks: "
                "install it there (pip install captum)") from exc

    def _mixed(self, data: list, context: Any, flags: list[bool]) -> list:
        """Predictions and explanations of one batch, each run on its own sub-batch."""
        output: list[Any] = [None] * len(data)
        for explain in (False, True):
            indices = [index for index, flag in enumerate(flags) if flag is explain]
            rows = [data[index] for index in indices]
            self.explain = explain
            with _narrowed(context, indices):
                if explain:
                    answers = self._explain(rows)
                else:
                    answers = self.postprocess(self.inference(self.preprocess(rows)))
            if not isinstance(answers, list) or len(answers) != len(indices):
                raise HandlerError(
                    f"{'explain_handle' if explain else 'postprocess'} answered "
                    f"{len(answers) if isinstance(answers, list) else type(answers).__name__}"
                    f" for a batch of {len(indices)}: it must return one answer per request")
            for index, answer in zip(indices, answers, strict=True):
                output[index] = answer
        return output

    def explain_handle(self, data_preprocess: Any, raw_data: list) -> Any:
        """TorchServe's default: get_insights(data_preprocess, inputs, target) with the
        first row's "data" (or "body") as inputs and its "target" (0 when absent)."""
        inputs = None
        target: Any = 0
        row = raw_data[0] if raw_data else None
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        get_insights = getattr(self, "get_insights", None)
        if get_insights is None:
            raise HandlerError(
                f"{type(self).__name__} cannot explain: define explain_handle(data_preprocess, "
                "raw_data) or get_insights(data_preprocess, inputs, target) on the handler "
                "(TorchServe's image and text handlers compute them with Captum)")
        return get_insights(data_preprocess, inputs, target)

    def describe_handle(self) -> Any:
        """A description of the model for a `describe: True` request; None by default."""
        return None

    def _is_explain(self) -> bool:
        """TorchServe's test: the first request of the batch asks for an explanation."""
        if _is_true(self.context, 0, "explain"):
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return _is_true(self.context, 0, "describe")

    def get_device(self) -> torch.device | None:
        return self.device


def _is_true(context: Any, index: int, header: str) -> bool:
    """Whether request `index` of the batch carries `header: True`, as TorchServe tests it."""
    if context is None:
        return False
    try:
        return context.get_request_header(index, header) == "True"
    except (IndexError, TypeError, AttributeError):  # no such request, or no processors
        return False


class _narrowed:
    """The context seen as the sub-batch `indices` of its batch, restored on exit."""

    def __init__(self, context: Any, indices: list[int]) -> None:
        self._context = context
        self._indices = indices
        self._saved: tuple = ()

    def __enter__(self) -> None:
        context, indices = self._context, self._indices
        processors, request_ids = context.request_processor, context.request_ids
        send_partial = getattr(context, "send_partial", None)
        self._saved = (processors, request_ids, send_partial)
        context.request_processor = [processors[index] for index in indices]
        if request_ids is not None:
            context.request_ids = {new: request_ids[old] for new, old in enumerate(indices)
                                   if old in request_ids}
        if send_partial is not None:
            def send_sub(index: int, *args: Any, **kwargs: Any) -> Any:
                return send_partial(indices[index], *args, **kwargs)
            context.send_partial = send_sub

    def __exit__(self, *exc_info: Any) -> None:
        context = self._context
        processors, request_ids, send_partial = self._saved
        context.request_processor, context.request_ids = processors, request_ids
        if send_partial is not None:
            context.send_partial = send_partial


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"serialized model file {path} not found")
