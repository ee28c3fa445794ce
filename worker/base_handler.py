"""A TorchServe-style `BaseHandler`: load the model, then preprocess -> inference -> postprocess.

`initialize(context)` loads the manifest's `serializedFile` from the model directory:

- without a `modelFile` in the manifest it is TorchScript, loaded with `torch.jit.load`;
- with one, the model file is imported, its single `torch.nn.Module` class instantiated with
  no arguments, and the state dict loaded with `torch.load(weights_only=True)`.

The model goes to `cuda:{gpu_id}` when CUDA is available and the worker has a GPU, else to
the CPU, and is put in eval mode. An `index_to_name.json` next to it becomes `self.mapping`
(read by `load_label_mapping`, as TorchServe reads it), `context.model_yaml_config` becomes
`self.model_yaml_config`. `handle(data, context)` runs the three steps on the whole batch,
inference under `torch.inference_mode()`. Captum explanations (`explain_handle`), the
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

from zerobatch.worker.compat.util import load_label_mapping
from zerobatch.worker.handler_loader import import_handler_module

log = logging.getLogger(__name__)

LABEL_MAPPING_FILE = "index_to_name.json"


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
        start_s = time.perf_counter()
        self.context = context
        output = self.postprocess(self.inference(self.preprocess(data)))
        metrics = getattr(context, "metrics", None)
        if metrics is not None:
            metrics.add_time("HandlerTime", round((time.perf_counter() - start_s) * 1000, 2),
                             None, "ms")
        return output


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"serialized model file {path} not found")
