"""The dashboard's routes (api/dashboard_app.py) on a bare Falcon ASGI app: the page and its
allow-listed assets served byte for byte with their content types and cache headers, every
other name (paths, traversals, the folder's other files) a 404 that names nothing on the
server, and the vendored uPlot still the file its README's hash describes."""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import falcon
import falcon.asgi
import falcon.testing
import pytest

from zerobatch.api.dashboard_app import ASSET_TYPES, DASHBOARD_DIR, add_dashboard_routes
from zerobatch.errors import ConfigError


def make_client(strip_trailing_slash: bool = False) -> falcon.testing.TestClient:
    app = falcon.asgi.App()
    app.req_options.strip_url_path_trailing_slash = strip_trailing_slash
    add_dashboard_routes(app)
    return falcon.testing.TestClient(app)


@pytest.fixture(scope="module")
def client():
    return make_client()


def read(name: str) -> bytes:
    with open(os.path.join(DASHBOARD_DIR, name), "rb") as handle:
        return handle.read()


def test_the_page_is_served_with_its_headers(client):
    result = client.simulate_get("/dashboard")
    assert result.status_code == 200
    assert result.headers["content-type"] == "text/html; charset=utf-8"
    assert result.content == read("index.html")
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-content-type-options"] == "nosniff"
    policy = result.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "script-src 'self';" in policy  # no inline scripts, no eval
    assert re.fullmatch(r'"[0-9a-f]{32}"', result.headers["etag"])


@pytest.mark.parametrize("name", sorted(ASSET_TYPES))
def test_each_asset_is_served_byte_for_byte_with_its_type(client, name):
    result = client.simulate_get(f"/dashboard/assets/{name}")
    assert result.status_code == 200
    assert result.content == read(name)
    expected = "text/javascript" if name.endswith(".js") else "text/css"
    assert result.headers["content-type"] == f"{expected}; charset=utf-8"
    assert result.headers["cache-control"] == "no-cache"


def test_every_asset_the_page_links_is_served(client):
    page = read("index.html").decode()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assets = [link for link in links if link.startswith("dashboard/assets/")]
    assert {link.rsplit("/", 1)[1] for link in assets} == set(ASSET_TYPES)
    for link in links:  # relative to /dashboard, same origin, nothing fetched from elsewhere
        assert not re.match(r"^(https?:)?//", link), link
    for link in assets:
        assert client.simulate_get("/" + link).status_code == 200


def test_a_matching_etag_is_answered_304_without_a_body(client):
    etag = client.simulate_get("/dashboard/assets/dashboard.js").headers["etag"]
    again = client.simulate_get("/dashboard/assets/dashboard.js",
                                headers={"If-None-Match": f'"other", {etag}'})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    changed = client.simulate_get("/dashboard/assets/dashboard.js",
                                  headers={"If-None-Match": '"other"'})
    assert changed.status_code == 200


def test_head_answers_the_headers_only(client):
    result = client.simulate_head("/dashboard")
    assert result.status_code == 200
    assert result.content == b""
    assert result.headers["content-type"] == "text/html; charset=utf-8"


@pytest.mark.parametrize("path", [
    "/dashboard/assets/README.md",
    "/dashboard/assets/uPlot.LICENSE",
    "/dashboard/assets/index.html",
    "/dashboard/assets/",
    "/dashboard/assets/..",
    "/dashboard/assets/%2e%2e",
    "/dashboard/assets/../dashboard_app.py",
    "/dashboard/assets/..%2Fdashboard_app.py",
    "/dashboard/assets/%2e%2e%2f%2e%2e%2fdashboard_app.py",
    "/dashboard/assets/..%5cdashboard_app.py",
    "/dashboard/assets/%2Fetc%2Fpasswd",
    "/dashboard/assets/dashboard.js%00",
    "/dashboard/assets/dashboard.js/",
    "/dashboard/assets/DASHBOARD.JS",
    "/dashboard/assets/dashboard.js/../../dashboard_app.py",
    "/dashboard/dashboard.js",
    "/dashboard/index.html",
])
def test_anything_else_is_refused_without_naming_the_server(client, path):
    result = client.simulate_get(path)
    assert result.status_code == 404
    assert DASHBOARD_DIR not in result.text and "dashboard_app" not in result.text


@pytest.mark.parametrize("strip", [False, True])
def test_a_trailing_slash_redirects_to_the_page(strip):
    result = make_client(strip).simulate_get("/dashboard/")
    assert result.status_code == 301
    assert result.headers["location"] == "../dashboard"
    kept = make_client(strip).simulate_get("/dashboard/", query_string="interval=5")
    assert kept.headers["location"] == "../dashboard?interval=5"
    assert make_client(strip).simulate_get("/dashboard").status_code == 200


def test_a_file_missing_from_the_installation_fails_at_startup(tmp_path):
    for name in ("index.html", *ASSET_TYPES):
        shutil.copy(os.path.join(DASHBOARD_DIR, name), tmp_path / name)
    add_dashboard_routes(falcon.asgi.App(), str(tmp_path))
    os.remove(tmp_path / "uPlot.min.css")
    with pytest.raises(ConfigError, match="uPlot.min.css is missing .* reinstall"):
        add_dashboard_routes(falcon.asgi.App(), str(tmp_path))


def test_the_vendored_files_are_the_ones_the_readme_describes():
    readme = read("README.md").decode()
    hashes = dict(re.findall(r"`([\w.]+)`\s*\|\s*`([0-9a-f]{64})`", readme))
    assert set(hashes) == {"uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"}
    for name, digest in hashes.items():
        assert hashlib.sha256(read(name)).hexdigest() == digest, name
    assert read("uPlot.iife.min.js").startswith(b"/*! https://github.com/leeoniya/uPlot (v1.6.32)")
    assert b"MIT License" in read("uPlot.LICENSE")
