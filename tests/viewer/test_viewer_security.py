"""Nothing outside the shard set is served: traversal attempts, unknown names and odd keys get 404."""
from __future__ import annotations

import asyncio
import http.client
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient

from tokencompose.viewer.app import create_app

VIEWER_SOURCE = Path(__file__).resolve().parents[2] / "tokencompose" / "viewer"

# Paths sent byte for byte (no client-side normalisation of dot segments).
TRAVERSALS = [
    "/../../../../etc/passwd",
    "/sample/../../../../etc/passwd",
    "/sample/..%2f..%2f..%2fetc%2fpasswd",
    "/sample/%2e%2e%2f%2e%2e%2fmanifest.json",
    "/sample/%2e%2e/image",
    "/sample/..%2Fmanifest.json/image",
    "/sample/..%5c..%5cmanifest.json/image",
    "/sample/000000000632%2f..%2f000000000285/image",
    "/sample/000000000632/../../config.json",
    "/sample/000000000632/..%2f..%2fconfig.json",
    "/sample//etc/passwd/image",
    "/sample/%2fetc%2fpasswd/image",
    "/sample/%2Fetc%2Fpasswd/thumb.jpg",
    "/sample/C:%5cWindows%5cwin.ini/image",
    "/sample/000000000632.json",
    "/sample/000000000632.jpg",
    "/sample/shard-000000.tar/image",
    "/sample/unknown-key",
    "/sample/unknown-key/image",
    "/sample/000000000632%00/image",
    "/sample/000000000632/mask/1.png",
    "/sample/000000000632/mask/4.png",
    "/sample/000000000632/mask/-1.png",
    "/sample/000000000632/mask/..%2f0.png",
    "/static/..%2fapp.py",
    "/static/%2e%2e%2fcatalog.py",
    "/static/../app.py",
    "/static/app.py",
    "/static/templates%2fbase.html",
    "/static/%2fetc%2fpasswd",
    "//etc/passwd",
    "/shards/shard-000000.tar",
    "/index/shard-000000.json",
    "/manifest.json",
    "/stats.json",
    "/?shard=../../etc/passwd",
    "/?shard=%2fetc%2fpasswd",
    "/?shard=shard-999999.tar",
    "/?shard=..%2fshards%2fshard-000000.tar",
    "/docs",
    "/openapi.json",
]


def asgi_get(app, raw: str, host: bytes = b"testserver") -> tuple[int, dict, bytes]:
    """One GET straight into the ASGI app with the given raw path (as a server would pass it on)."""
    path, _, query = raw.encode().partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(path.decode()), "raw_path": path, "query_string": query, "root_path": "",
             "headers": [(b"host", host)], "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture(scope="module")
def secret(demo_dir) -> bytes:
    """A file beside the shard set and one inside it that the viewer must never serve."""
    text = b"TOP-SECRET-7f3a"
    (demo_dir.parent / "secret.txt").write_bytes(text)
    return text


@pytest.mark.parametrize("raw", TRAVERSALS)
def test_traversal_and_unknown_names_get_404(demo_app, secret, raw):
    status, headers, body = asgi_get(demo_app, raw)
    assert status == 404, raw
    assert secret not in body and b"root:" not in body
    assert b'"config_hash"' not in body  # no dataset file either


def test_traversal_through_the_real_server(live_server, secret):
    """The same requests over a socket to uvicorn, sent exactly as written."""
    for raw in TRAVERSALS:
        connection = http.client.HTTPConnection("127.0.0.1", live_server.port, timeout=10)
        connection.putrequest("GET", raw, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status in (400, 404), raw  # uvicorn itself may refuse a malformed target
        assert secret not in body and b"root:" not in body, raw


def test_good_requests_still_work_through_the_same_path(demo_app):
    assert asgi_get(demo_app, "/sample/000000000632")[0] == 200
    assert asgi_get(demo_app, "/sample/000000000632/mask/0.png")[0] == 200
    assert asgi_get(demo_app, "/?shard=shard-000000.tar")[0] == 200


def test_security_headers(client):
    response = client.get("/sample/000000000632")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert client.get("/sample/000000000632/image").headers["x-content-type-options"] == "nosniff"


def test_404_page_does_not_echo_the_request(client):
    response = client.get("/sample/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert response.status_code == 404
    assert "<script>alert" not in response.text and "alert(1)" not in response.text


def test_host_header_is_checked_when_bound_to_loopback(demo_dir):
    app = create_app(demo_dir, allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/").status_code == 200
    assert TestClient(app, base_url="http://localhost:8765").get("/").status_code == 200
    assert TestClient(app, base_url="http://attacker.example").get("/").status_code == 400


def test_viewer_code_never_unpickles():
    pattern = re.compile(r"\b(pickle|cPickle|dill|joblib|torch\.load|np\.load|numpy\.load|marshal|shelve|eval|exec)\b")
    for path in VIEWER_SOURCE.rglob("*.py"):
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        assert not pattern.search(code), f"{path.name}: {pattern.search(code).group(0)}"
