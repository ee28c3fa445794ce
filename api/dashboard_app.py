"""The live dashboard's routes (docs/dashboard.md), for the metrics app to mount in one line:

    GET|HEAD /dashboard                 api/dashboard/index.html
    GET|HEAD /dashboard/                a redirect to ../dashboard, query kept (the page's
                                        links are relative to /dashboard)
    GET|HEAD /dashboard/assets/{name}   the page's script and style sheet, and the vendored uPlot

The page itself polls `metrics` (the same origin's /metrics) and does all its arithmetic in the
browser (api/dashboard/dashboard.js); nothing here reads a metric. Only the files named in
ASSET_TYPES are served, from memory: they are read once, when the routes are added (a file
missing from the installation is a startup error that says so), and any other name, a path
included, is a 404 that names nothing on the server. Every answer carries a strong ETag,
`Cache-Control: no-cache` (the browser revalidates, a 304 costs nothing, an upgrade is never
hidden behind a stale script), `X-Content-Type-Options: nosniff` and a Content-Security-Policy
that lets the page load only its own scripts and styles and fetch only its own origin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import falcon
import falcon.asgi

from zerobatch.errors import ConfigError

__all__ = ["ASSET_TYPES", "DASHBOARD_DIR", "add_dashboard_routes"]

DASHBOARD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard")
PAGE_PATH = "/dashboard"
INDEX_NAME = "index.html"
INDEX_TYPE = "text/html; charset=utf-8"
#: the allow-list: every file /dashboard/assets/ serves, with its content type
ASSET_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
CACHE_CONTROL = "no-cache"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclasses.dataclass(frozen=True)
class StaticFile:
    """One served file, held in memory."""

    body: bytes
    content_type: str
    etag: str


def load_files(directory: str = DASHBOARD_DIR) -> dict[str, StaticFile]:
    """index.html and the allow-listed assets of `directory`, by name."""
    files = {}
    for name, content_type in {INDEX_NAME: INDEX_TYPE, **ASSET_TYPES}.items():
        try:
            with open(os.path.join(directory, name), "rb") as handle:
                body = handle.read()
        except OSError as exc:
            raise ConfigError(
                f"the dashboard's file {name} is missing from this installation of zerobatch "
                f"({exc.strerror}); reinstall it (its package data includes api/dashboard/*)"
            ) from exc
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[name] = StaticFile(body, content_type, etag)
    return files


def _not_modified(req: falcon.asgi.Request, etag: str) -> bool:
    header = req.get_header("If-None-Match")
    if not header:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in tags or etag in tags


def _send(req: falcon.asgi.Request, resp: falcon.asgi.Response, file: StaticFile) -> None:
    resp.set_header("ETag", file.etag)
    resp.set_header("Cache-Control", CACHE_CONTROL)
    resp.set_header("X-Content-Type-Options", "nosniff")
    resp.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    resp.set_header("Referrer-Policy", "no-referrer")
    if _not_modified(req, file.etag):
        resp.status = falcon.HTTP_304
        return
    resp.content_type = file.content_type
    resp.data = file.body


class DashboardPage:
    """GET /dashboard: the page; GET /dashboard/: a redirect to it, since the page's links are
    relative to /dashboard (an app that strips trailing slashes routes both here)."""

    def __init__(self, index: StaticFile) -> None:
        self._index = index

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if req.scope.get("path", "").endswith("/"):
            query = req.query_string
            raise falcon.HTTPMovedPermanently("../dashboard" + (f"?{query}" if query else ""))
        _send(req, resp, self._index)

    on_head = on_get


class DashboardAsset:
    """GET /dashboard/assets/{name}: one of ASSET_TYPES' files, else 404."""

    def __init__(self, assets: dict[str, StaticFile]) -> None:
        self._assets = assets

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     name: str) -> None:
        asset = self._assets.get(name)
        if asset is None:
            raise falcon.HTTPNotFound()
        _send(req, resp, asset)

    on_head = on_get


def add_dashboard_routes(app: falcon.asgi.App, directory: str = DASHBOARD_DIR) -> None:
    """Add the dashboard's routes to `app` (the metrics app, which serves /metrics beside them).
    Raises ConfigError when one of the page's files is missing."""
    files = load_files(directory)
    page = DashboardPage(files[INDEX_NAME])
    app.add_route(PAGE_PATH, page)
    app.add_route(PAGE_PATH + "/", page)
    app.add_route(PAGE_PATH + "/assets/{name}",
                  DashboardAsset({name: files[name] for name in ASSET_TYPES}))
