"""The chat blueprint: pages, the settings handed to the browser, and the assets it serves."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from webui import chat

STATIC = Path(chat.__file__).parent / "static"
TEMPLATES = Path(chat.__file__).parent / "templates"
CONFIG_BLOCK = re.compile(r'<script type="application/json" id="app-config">(.*?)</script>', re.S)
RELATIVE_IMPORT = re.compile(r'^import\s[^;]*?from\s+"(\./[^"]+)";', re.M)


def make_client(**config: Any) -> FlaskClient:
    app = Flask("webui_pages_test", static_folder=None)
    app.config.update(TESTING=True, **config)
    chat.init_app(app)
    return app.test_client()


def page_settings(html: str) -> dict[str, Any]:
    match = CONFIG_BLOCK.search(html)
    assert match, "the page must carry its settings as a JSON block"
    settings: dict[str, Any] = json.loads(match.group(1))
    return settings


@pytest.mark.parametrize("path", ["/", "/inspector"])
def test_pages_default_to_the_streams_root_on_the_same_origin(path: str) -> None:
    response = make_client().get(path)
    assert response.status_code == 200
    assert page_settings(response.get_data(as_text=True)) == {
        "streamsUrl": "/v1/stream",
        "authToken": None,
        "silenceMs": 37500,  # 2.5 keep-alives of 15 s
        "queuedMs": 65000,  # an SSE response's 60 s, and some
        "agents": {"wakeStream": "agents/wake", "leaseTtlMs": 30000},
    }
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp


def test_an_absolute_streams_url_and_a_token_reach_the_page_and_the_policy() -> None:
    client = make_client(STREAMS_BROWSER_URL="https://streams.example:8443/v1/stream/",
                         STREAMS_AUTH_TOKEN="s3cret")
    response = client.get("/")
    settings = page_settings(response.get_data(as_text=True))
    assert settings["streamsUrl"] == "https://streams.example:8443/v1/stream"
    assert settings["authToken"] == "s3cret"
    assert "connect-src 'self' https://streams.example:8443" in response.headers["Content-Security-Policy"]
    for path in ("/", "/inspector"):  # a page with the token in it is kept by no cache
        assert client.get(path).headers["Cache-Control"] == "no-store", path


def test_settings_cannot_break_out_of_their_json_block() -> None:
    html = make_client(STREAMS_BROWSER_URL="/x</script><script>alert(1)</script>").get("/").get_data(as_text=True)
    assert "<script>alert(1)" not in html
    assert page_settings(html)["streamsUrl"] == "/x</script><script>alert(1)</script>"


def module_graph(entry: str) -> set[str]:
    """Every module an entry point imports, transitively (relative imports only)."""
    seen: set[str] = set()
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        source = (STATIC / "js" / name).read_text(encoding="utf-8")
        pending.extend(target.removeprefix("./") for target in RELATIVE_IMPORT.findall(source))
    return seen


@pytest.mark.parametrize("entry", ["chat.js", "inspector.js"])
def test_every_module_a_page_needs_is_served_as_javascript(entry: str) -> None:
    client = make_client()
    modules = module_graph(entry)
    assert {"streams.js", "hub.js"} <= modules
    for name in sorted(modules):
        response = client.get(f"/ui/js/{name}")
        assert response.status_code == 200, name
        assert response.mimetype in ("text/javascript", "application/javascript"), name


def test_the_pages_load_nothing_from_other_origins() -> None:
    client = make_client()
    for path in ("/", "/inspector"):
        html = client.get(path).get_data(as_text=True)
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not re.match(r"^(https?:)?//", url), url
    for asset in [*STATIC.rglob("*.css"), *STATIC.rglob("*.js"), *TEMPLATES.rglob("*.html")]:
        text = asset.read_text(encoding="utf-8")
        assert "@import" not in text and "cdn" not in text.lower(), asset
        assert not re.search(r'from\s+"(https?:)?//', text), asset


def test_model_text_never_reaches_inner_html() -> None:
    """The renderer builds DOM nodes; no module assigns markup from strings."""
    for script in (STATIC / "js").glob("*.js"):
        text = script.read_text(encoding="utf-8")
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", text), script
