"""`ts.utils.util`: the helpers TorchServe handlers import, with TorchServe's behaviour.

`PredictionException(message, error_code)` raised by a handler answers every request of its
batch with status `error_code` and `message` (worker.service maps it).
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import os
import re
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

#: HTML tags and character entities, as TorchServe's text handlers strip them.
CLEANUP_REGEX = re.compile("<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")


class PredictionException(Exception):
    """A handler's failure with the HTTP status its batch's requests are answered with."""

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: ModuleType, parent_class: type | None = None) -> list:
    """The classes defined in `module` (not imported into it), optionally only subclasses."""
    classes = [member for _, member in inspect.getmembers(module, inspect.isclass)
               if member.__module__ == module.__name__]
    if parent_class is not None:
        return [cls for cls in classes if issubclass(cls, parent_class)]
    return classes


def load_label_mapping(mapping_file_path: str) -> dict[str, str] | None:
    """Read an `index_to_name.json` {class index: label}; None (and a warning) when missing.

    As in TorchServe: `{"object_type_names": [...]}` is read as a list of labels, and a label
    given as a list (`{"0": ["n01440764", "tench"]}`) keeps its last item.
    """
    if not os.path.isfile(mapping_file_path):
        log.warning("%r is missing. Inference output will not include class name.",
                    mapping_file_path)
        return None
    with open(mapping_file_path, encoding="utf-8") as f:
        mapping = json.load(f)
    if not isinstance(mapping, dict):
        raise ValueError('index->name JSON mapping should be in "class": "label" format.')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(index): name for index, name in enumerate(names)}
    for key, value in mapping.items():
        label = value[-1] if isinstance(value, list) and value else value
        if not isinstance(label, str):
            raise ValueError("labels in index->name mapping must be either str or List[str]")
        mapping[key] = label
    return mapping


def map_class_to_label(probs: list, mapping: dict | None = None,
                       lbl_classes: list | None = None) -> list[dict]:
    """One {label: probability} dict per row of `probs`, classes from `lbl_classes` or 0..n-1."""
    if not isinstance(probs, list):
        raise TypeError("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("Mapping must be a dict")
    if lbl_classes is None:
        lbl_classes = itertools.repeat(range(len(probs[0])), len(probs)) if probs else []
    return [
        {(mapping[str(lbl_class)] if mapping is not None else str(lbl_class)): prob
         for lbl_class, prob in zip(classes, row, strict=False)}
        for classes, row in zip(lbl_classes, probs, strict=False)
    ]


def get_yaml_config(yaml_file_path: str) -> dict[str, Any]:
    """A YAML file's content ({} when it is empty)."""
    import yaml

    with open(yaml_file_path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}
