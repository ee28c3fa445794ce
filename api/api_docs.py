"""The API reference pages, docs/api/inference.md and docs/api/management.md, rendered from the
OpenAPI descriptions the HTTP apps answer `OPTIONS /` with (api/openapi/inference.json and
api/openapi/management.json), so the pages cannot drift from what the server describes.

`render(document, title, intro)` turns one OpenAPI 3 document into Markdown: the intro, then per
path and method, in the document's order, the operation's heading, its summary and description,
its parameters, request body and responses, and at the end the component schemas the
operations name (a `$ref` is shown as the schema's name, linked to its section; a schema's
fields are listed one table each, inline nested objects flattened as `parent.child`). The
output holds nothing but the documents (no dates), so the same JSON gives the same pages.

Regenerate the pages after editing the JSON, from the repository root (stdlib only, no make):

    python -m zerobatch.api.api_docs --out docs/api

and check that they are current (exit status 1 and a message naming the stale pages if not):

    python -m zerobatch.api.api_docs --out docs/api --check

Without --out, the pages go to docs/api/ of the checkout this module lives in (the editable
install); an installed wheel has no docs/, so there --out is required.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

#: the APIs with a page: name -> (title, intro); each page is `<name>.md`, from `<name>.json`
APIS = {
    "inference": (
        "Inference API",
        "zerobatch's inference API: TorchServe's inference paths on the HTTP port (8080 unless "
        "`--http-port` says otherwise), with the additions marked as zerobatch's own. The "
        "server answers this same description to `OPTIONS /`."),
    "management": (
        "Management API",
        "zerobatch's management API: TorchServe's paths for listing, describing, scaling, "
        "registering and unregistering models and choosing their default versions, on the "
        "management address (TorchServe's `management_address`, http://127.0.0.1:8081 by "
        "default; `zerobatch start --management-address`). With token authorization on (the "
        "default), every call sends the management key as `Authorization: Bearer KEY` "
        "(`zerobatch token management`); registering and unregistering need "
        "`--enable-model-api`. The server answers this same description to `OPTIONS /`."),
}
#: what regenerates the pages, run from the repository root
COMMAND = "python -m zerobatch.api.api_docs --out docs/api"
#: the first line of every page
GENERATED = ("_Generated from `api/openapi/{api}.json` by `{command}` (run from the repository "
             "root): edit the JSON and rerun it, never this page._")
#: the OpenAPI descriptions, package data beside this module
OPENAPI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi")
#: the HTTP methods a path item may hold, in OpenAPI's order (the document's order wins)
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SCHEMA_PREFIX = "#/components/schemas/"


def render(document: dict, title: str, intro: str) -> str:
    """One OpenAPI 3 document as a Markdown page headed `title`, `intro` its first paragraph."""
    return _Page(document).render(title, intro)


def page(api: str) -> str:
    """The page of one API of APIS, from its JSON beside this module, generated line first."""
    with open(os.path.join(OPENAPI_DIR, f"{api}.json"), encoding="utf-8") as handle:
        document = json.load(handle)
    title, intro = APIS[api]
    return GENERATED.format(api=api, command=COMMAND) + "\n\n" + render(document, title, intro)


def operations(document: dict) -> list[tuple[str, str]]:
    """Every (METHOD, path) the document describes, in its order."""
    return [(method.upper(), path) for path, item in (document.get("paths") or {}).items()
            for method in item if method in METHODS]


# ------------------------------------------------------------------ rendering

class _Slugs:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces as
    `-`, a repeated anchor numbered (`-1`, `-2`)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def add(self, heading: str) -> str:
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = self._seen.get(slug, 0)
        self._seen[slug] = count + 1
        return slug if count == 0 else f"{slug}-{count}"


class _Page:
    def __init__(self, document: dict) -> None:
        self.document = document
        self.schemas: dict[str, Any] = (document.get("components") or {}).get("schemas") or {}
        self.schema_anchors: dict[str, str] = {}

    # -------------------------------------------------------------- the page

    def render(self, title: str, intro: str) -> str:
        slugs = _Slugs()
        slugs.add(title)
        ops = operations(self.document)
        op_anchors = {op: slugs.add(_op_heading(*op)) for op in ops}
        if self.schemas:
            slugs.add("Schemas")
            self.schema_anchors = {name: slugs.add(name) for name in self.schemas}
        out = [f"# {title}", intro]
        description = (self.document.get("info") or {}).get("description")
        if description:
            out.append(description)
        if ops:
            out.append("\n".join(
                f"- [`{method} {path}`](#{op_anchors[(method, path)]})"
                + (f": {summary}" if (summary := self._short(method, path)) else "")
                for method, path in ops))
        for method, path in ops:
            out.extend(self._operation(method, path))
        if self.schemas:
            out.append("## Schemas")
            for name, schema in self.schemas.items():
                out.extend(self._schema_section(name, schema))
        return "\n\n".join(part.strip("\n") for part in out if part) + "\n"

    def _short(self, method: str, path: str) -> str:
        """The contents line's text: the summary, or the description's first sentence."""
        op = self.document["paths"][path][method.lower()]
        text = op.get("summary") or op.get("description") or ""
        sentence = re.match(r"(.+?[.!?])(\s|$)", text, re.S)
        return _one_line(sentence.group(1) if sentence else text)

    # -------------------------------------------------------------- an operation

    def _operation(self, method: str, path: str) -> list[str]:
        item = self.document["paths"][path]
        op = item[method.lower()]
        out = [f"## {_op_heading(method, path)}"]
        if op.get("deprecated"):
            out.append("**Deprecated.**")
        for key in ("summary", "description"):
            if op.get(key):
                out.append(op[key])
        if op.get("operationId"):
            out.append(f"Operation id: `{op['operationId']}`")
        security = op.get("security", self.document.get("security"))
        if security:
            out.append("Security: " + " or ".join(
                " and ".join(f"`{name}`" for name in requirement) or "none"
                for requirement in security))
        out.extend(self._parameters(item, op))
        if op.get("requestBody"):
            out.extend(self._request_body(self._resolve(op["requestBody"])))
        if op.get("responses"):
            out.extend(self._responses(op["responses"]))
        return out

    def _parameters(self, item: dict, op: dict) -> list[str]:
        """The path item's parameters, then the operation's (which replace a same-named
        one of the same place, as OpenAPI says)."""
        merged: dict[tuple[str, str], dict] = {}
        for raw in [*(item.get("parameters") or ()), *(op.get("parameters") or ())]:
            parameter = self._resolve(raw)
            merged[(parameter.get("name", ""), parameter.get("in", ""))] = parameter
        if not merged:
            return []
        rows = []
        for parameter in merged.values():
            schema = parameter.get("schema")
            if schema is None:  # a parameter described by `content` instead
                schema = next(iter((parameter.get("content") or {}).values()), {}).get("schema")
            required = parameter.get("required") or parameter.get("in") == "path"
            description = parameter.get("description", "")
            if parameter.get("deprecated"):
                description = f"Deprecated. {description}"
            rows.append((f"`{parameter.get('name', '')}`", parameter.get("in", ""),
                         "yes" if required else "no", self._type(schema, default=True),
                         description))
        return ["**Parameters**",
                _table(("Name", "In", "Required", "Type", "Description"), rows)]

    def _request_body(self, body: dict) -> list[str]:
        out = ["**Request body**" + (" (required)" if body.get("required") else "")]
        if body.get("description"):
            out.append(body["description"])
        content = body.get("content") or {}
        if content:
            out.append(_table(("Content type", "Schema"), [
                (f"`{media_type}`", self._type((media or {}).get("schema"), fields=True))
                for media_type, media in content.items()]))
        return out

    def _responses(self, responses: dict) -> list[str]:
        rows, header_rows = [], []
        for status, raw in responses.items():
            response = self._resolve(raw)
            content = response.get("content") or {}
            schemas = "<br>".join(
                f"`{media_type}`: {self._type((media or {}).get('schema'), fields=True)}"
                for media_type, media in content.items()) or "(no body)"
            rows.append((str(status), response.get("description", ""), schemas))
            for name, raw_header in (response.get("headers") or {}).items():
                header = self._resolve(raw_header)
                header_rows.append((str(status), f"`{name}`", self._type(header.get("schema")),
                                    header.get("description", "")))
        out = ["**Responses**", _table(("Status", "Description", "Body"), rows)]
        if header_rows:
            out += ["**Response headers**",
                    _table(("Status", "Header", "Type", "Description"), header_rows)]
        return out

    # -------------------------------------------------------------- schemas

    def _schema_section(self, name: str, schema: Any) -> list[str]:
        schema = schema if isinstance(schema, dict) else {}
        out = [f"### {name}"]
        if schema.get("description"):
            out.append(schema["description"])
        rows = self._fields(schema, "")
        if rows:
            out.append(_table(("Field", "Type", "Required", "Description"), rows))
        else:
            out.append(f"Type: {self._type(schema)}")
        return out

    def _fields(self, schema: dict, prefix: str) -> list[tuple[str, ...]]:
        """One row per property, inline objects' properties after their own row as
        `parent.child` (`parent[].child` for an array's items); a `$ref` is not followed."""
        rows = []
        required = set(schema.get("required") or ())
        for name, prop in (schema.get("properties") or {}).items():
            prop = prop if isinstance(prop, dict) else {}
            rows.append((f"`{prefix}{name}`", self._type(prop), "yes" if name in required
                         else "no", prop.get("description", "")))
            inner, joint = prop, "."
            if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
                inner, joint = prop["items"], "[]."
            if "$ref" not in inner and inner.get("properties"):
                rows.extend(self._fields(inner, f"{prefix}{name}{joint}"))
        return rows

    def _type(self, schema: Any, *, default: bool = False, fields: bool = False) -> str:
        """A schema as a readable type: a `$ref` by its name (a component schema linked to its
        section), `array of X`, a format, an enum, bounds; `default` adds the default value,
        `fields` lists an inline object's properties (one level)."""
        if not isinstance(schema, dict) or not schema:
            return "any"
        if "$ref" in schema:
            return self._ref_name(schema["$ref"])
        for key, joint in (("oneOf", " or "), ("anyOf", " or "), ("allOf", " and ")):
            if schema.get(key):
                return joint.join(self._type(part) for part in schema[key])
        kind = schema.get("type") or ("object" if "properties" in schema else "any")
        if kind == "array":
            text = "array of " + self._type(schema.get("items"))
        else:
            text = kind + (f" ({schema['format']})" if schema.get("format") else "")
        if fields and kind == "object" and schema.get("properties"):
            text += " {" + ", ".join(f"`{name}`: {self._type(prop)}"
                                     for name, prop in schema["properties"].items()) + "}"
        if schema.get("enum"):
            text += ", one of " + ", ".join(f"`{_scalar(value)}`" for value in schema["enum"])
        for key, word in (("minimum", "minimum"), ("maximum", "maximum")):
            if key in schema:
                text += f", {word} {_scalar(schema[key])}"
        if schema.get("nullable"):
            text += ", nullable"
        if default and "default" in schema:
            text += f", default `{_scalar(schema['default'])}`"
        return text

    def _ref_name(self, ref: str) -> str:
        name = ref.rsplit("/", 1)[-1]
        if ref.startswith(SCHEMA_PREFIX) and name in self.schema_anchors:
            return f"[{name}](#{self.schema_anchors[name]})"
        return f"`{name}`"

    def _resolve(self, value: Any) -> dict:
        """A parameter, request body, response or header given by `$ref`: the object it
        names in this document (one level), or a stand-in naming the reference."""
        if not isinstance(value, dict):
            return {}
        ref = value.get("$ref")
        if not isinstance(ref, str):
            return value
        target: Any = self.document
        if ref.startswith("#/"):
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
        else:
            target = None
        if not isinstance(target, dict):
            return {"description": f"(unresolved reference `{ref}`)"}
        return target


def _op_heading(method: str, path: str) -> str:
    return f"`{method} {path}`"


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    def cell(text: Any) -> str:
        return _one_line(text).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(text) for text in row) + " |" for row in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ command line

def default_out_dir() -> str | None:
    """docs/api of the checkout this module lives in (api/ beside docs/), None when there is
    no docs/ there (an installed wheel)."""
    docs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
    return os.path.join(docs, "api") if os.path.isdir(docs) else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zerobatch.api.api_docs",
        description="Write (or --check) docs/api/<api>.md from api/openapi/<api>.json.")
    parser.add_argument("--out", metavar="DIR",
                        help="where the pages go (default: docs/api of this checkout)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a page differs from a fresh render")
    args = parser.parse_args(argv)
    out_dir = args.out or default_out_dir()
    if out_dir is None:
        parser.error("no docs/ beside this module (an installed package has none): "
                     "pass --out DIR")
    pages = {os.path.join(out_dir, f"{api}.md"): page(api) for api in APIS}
    if args.check:
        stale = [path for path, text in pages.items() if _read(path) != text]
        if stale:
            print(f"{', '.join(stale)}: not what api/openapi/*.json gives; regenerate with "
                  f"`{COMMAND}` from the repository root", file=sys.stderr)
            return 1
        print(f"{', '.join(pages)}: up to date")
        return 0
    os.makedirs(out_dir, exist_ok=True)
    for path, text in pages.items():
        if _read(path) != text:
            with open(path, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
