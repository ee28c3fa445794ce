"""The API reference pages (docs/api/*.md) against the OpenAPI descriptions they are rendered
from (api/openapi/*.json, by api/api_docs.py): the committed pages are what a fresh render
gives, every described operation has its section, and the renderer's Markdown for a small
hand-written document is exactly what is expected.
"""

from __future__ import annotations

import json
import os

import pytest

from zerobatch.api import api_docs
from zerobatch.api.api_docs import APIS, COMMAND, main, operations, page, render

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS_DIR = os.path.join(ROOT, "docs", "api")


def described(api: str) -> dict:
    with open(os.path.join(api_docs.OPENAPI_DIR, f"{api}.json"), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.parametrize("api", sorted(APIS))
def test_committed_page_is_a_fresh_render(api):
    path = os.path.join(DOCS_DIR, f"{api}.md")
    with open(path, encoding="utf-8", newline="") as handle:
        committed = handle.read()
    assert committed == page(api), (
        f"docs/api/{api}.md is not what api/openapi/{api}.json gives: regenerate it with "
        f"`{COMMAND}` from the repository root and commit the result")


@pytest.mark.parametrize("api", sorted(APIS))
def test_every_operation_has_its_section(api):
    ops = operations(described(api))
    text = page(api)
    assert ops, f"api/openapi/{api}.json describes no operation"
    for method, path in ops:
        assert f"\n## `{method} {path}`\n" in text, f"{method} {path} has no section"
    assert text.count("\n## `") == len(ops)
    assert text.startswith(f"_Generated from `api/openapi/{api}.json` by `{COMMAND}`")


def test_operations_follow_the_documents_order():
    document = {"paths": {"/b": {"post": {}, "parameters": [], "get": {}}, "/a": {"get": {}}}}
    assert operations(document) == [("POST", "/b"), ("GET", "/b"), ("GET", "/a")]


TINY = {
    "openapi": "3.0.1",
    "info": {"title": "Tiny", "version": "", "description": "A tiny API."},
    "paths": {
        "/items/{item_id}": {
            "parameters": [{"$ref": "#/components/parameters/ItemId"}],
            "get": {
                "summary": "Get an item.",
                "description": "The item | its tags.",
                "operationId": "getItem",
                "parameters": [{"in": "query", "name": "limit",
                                "schema": {"type": "integer", "default": 10, "minimum": 1}}],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": {
                        "type": "array", "items": {"$ref": "#/components/schemas/Item"}}}}},
                    "404": {"description": "No such item"},
                },
            },
            "put": {
                "deprecated": True,
                "requestBody": {"required": True, "content": {"text/plain": {
                    "schema": {"type": "string", "format": "binary"}}}},
                "responses": {"204": {"description": "Stored", "headers": {
                    "x-etag": {"description": "The new tag.", "schema": {"type": "string"}}}}},
            },
        },
    },
    "components": {
        "parameters": {"ItemId": {"in": "path", "name": "item_id",
                                  "description": "Which item (id | name).",
                                  "schema": {"type": "string"}}},
        "schemas": {"Item": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "description": "Its name."},
            "tags": {"type": "array", "items": {"type": "object", "properties": {
                "label": {"type": "string", "enum": ["a", "b"]}}}},
        }}},
    },
}

TINY_MARKDOWN = """\
# Tiny API

An intro.

A tiny API.

- [`GET /items/{item_id}`](#get-itemsitem_id): Get an item.
- [`PUT /items/{item_id}`](#put-itemsitem_id)

## `GET /items/{item_id}`

Get an item.

The item | its tags.

Operation id: `getItem`

**Parameters**

| Name | In | Required | Type | Description |
|---|---|---|---|---|
| `item_id` | path | yes | string | Which item (id \\| name). |
| `limit` | query | no | integer, minimum 1, default `10` |  |

**Responses**

| Status | Description | Body |
|---|---|---|
| 200 | OK | `application/json`: array of [Item](#item) |
| 404 | No such item | (no body) |

## `PUT /items/{item_id}`

**Deprecated.**

**Parameters**

| Name | In | Required | Type | Description |
|---|---|---|---|---|
| `item_id` | path | yes | string | Which item (id \\| name). |

**Request body** (required)

| Content type | Schema |
|---|---|
| `text/plain` | string (binary) |

**Responses**

| Status | Description | Body |
|---|---|---|
| 204 | Stored | (no body) |

**Response headers**

| Status | Header | Type | Description |
|---|---|---|---|
| 204 | `x-etag` | string | The new tag. |

## Schemas

### Item

| Field | Type | Required | Description |
|---|---|---|---|
| `name` | string | yes | Its name. |
| `tags` | array of object | no |  |
| `tags[].label` | string, one of `a`, `b` | no |  |
"""


def test_tiny_document_renders_as_expected():
    assert render(TINY, "Tiny API", "An intro.") == TINY_MARKDOWN


def test_render_is_deterministic_and_leaves_the_document_alone():
    before = json.dumps(TINY, sort_keys=True)
    assert render(TINY, "Tiny API", "An intro.") == render(TINY, "Tiny API", "An intro.")
    assert json.dumps(TINY, sort_keys=True) == before


def test_unresolvable_reference_is_named_not_fatal():
    document = {"paths": {"/x": {"get": {"responses": {"200": {"$ref": "#/nowhere/Gone"}}}}}}
    assert "(unresolved reference `#/nowhere/Gone`)" in render(document, "X", "Intro.")


def test_main_writes_then_check_passes_and_a_stale_page_fails(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--check"]) == 1  # nothing written yet
    assert COMMAND in capsys.readouterr().err
    assert main(["--out", str(tmp_path)]) == 0
    for api in APIS:
        assert (tmp_path / f"{api}.md").read_text(encoding="utf-8") == page(api)
    assert main(["--out", str(tmp_path), "--check"]) == 0
    stale = tmp_path / "management.md"
    stale.write_text(stale.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "management.md" in err and "inference.md" not in err and COMMAND in err


def test_without_a_checkout_out_is_required(monkeypatch, capsys):
    """An installed wheel has no docs/ beside the package: main says to pass --out."""
    monkeypatch.setattr(api_docs, "default_out_dir", lambda: None)
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "pass --out DIR" in capsys.readouterr().err
