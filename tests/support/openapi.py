"""Checking the OpenAPI descriptions the HTTP apps answer with (api/openapi/)."""

from __future__ import annotations

from typing import Any


def refs(value: Any) -> list[str]:
    """Every `$ref` in an OpenAPI document (or part of one), depth first."""
    if isinstance(value, dict):
        return [ref for key, item in value.items()
                for ref in ([item] if key == "$ref" else refs(item))]
    if isinstance(value, list):
        return [ref for item in value for ref in refs(item)]
    return []
