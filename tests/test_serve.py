"""The web API: uploads (limits, safe names), path traversal on every path-taking endpoint, video
bytes with HTTP ranges, search JSON, with FastAPI's TestClient and a real uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from test_library import ColourEncoder, colour_predictor, colour_video, index, make_folder  # noqa: E402

from momentkit.library import Library, SearchEngine  # noqa: E402
from momentkit.serving import UploadStore, VideoService  # noqa: E402
from momentkit.serving.app import create_app  # noqa: E402
from momentkit.serving.server import is_loopback  # noqa: E402
from momentkit.serving.uploads import display_name  # noqa: E402

UPLOAD_ID = re.compile(r"u-[0-9a-f]{32}")
# the server answers only for its own names (DNS rebinding): TestClient must use one of them
BASE_URL = "http://127.0.0.1:8000"
# ids a client might try to reach files outside the allowed folders with (literal ".." is
# normalised away by HTTP clients; test_real_server_... sends it raw)
TRAVERSAL_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "u-..%2F..%2Fetc%2Fpasswd",
    "u-0123456789abcdef0123456789abcdeg",
    "l-0",
    "l-999999",
    "l-1%2F..",
    "l--1",
    "l-1.0",
]


def colour_service(tmp_path: Path, db: Path | None, max_bytes: int = 1 << 20) -> VideoService:
    uploads = UploadStore(tmp_path / "uploads", max_bytes)
    if db is None:
        return VideoService(uploads, load_predictor=colour_predictor)
    encoder = ColourEncoder()
    return VideoService(
        uploads,
        Library.open(db),
        load_engine=lambda lib: SearchEngine(lib, encoder, colour_predictor(encoder)),
    )


@pytest.fixture()
def library_db(tmp_path) -> Path:
    root = tmp_path / "videos"
    make_folder(root)
    (root / "notes.txt").write_text("not a video")
    db = tmp_path / "lib.db"
    index(db, root)
    return db


@pytest.fixture()
def client(tmp_path, library_db) -> Iterator[TestClient]:
    service = colour_service(tmp_path, library_db, max_bytes=64 * 1024)
    with TestClient(create_app(service, encoder="clip:colour-test"), base_url=BASE_URL) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c
    service.library.close()  # type: ignore[union-attr]


def upload(client: TestClient, data: bytes, name: str = "clip.mp4"):
    return client.post("/api/videos", files={"file": (name, data, "video/mp4")})


def ids_of(client: TestClient) -> dict[str, str]:
    return {v["name"]: v["id"] for v in client.get("/api/videos").json()["videos"]}


# ------------------------------------------------------------------------------------- the page
def test_page_assets_and_security_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script type="module" src="/static/app.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    for path in ["/static/index.html", "/static/missing.js", "/static/%2e%2e%2fapp.py"]:
        assert client.get(path).status_code == 404
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside


def test_info_and_listing(client):
    info = client.get("/api/info").json()
    assert info["library"] == {"videos": 3, "clips": 15}
    assert info["encoder"] == "clip:colour-test" and info["max_upload_mb"] == 0.0625
    videos = client.get("/api/videos").json()["videos"]
    assert [v["name"] for v in videos] == ["a.mp4", "b.mp4", "c.mp4"]
    assert all(set(v) == {"id", "name", "source", "duration", "url"} for v in videos)
    assert all(re.fullmatch(r"l-\d+", v["id"]) for v in videos)
    assert "notes.txt" not in json.dumps(videos)


# ---------------------------------------------------------------------------------------- uploads
def test_upload_stores_under_a_server_name(client, tmp_path):
    data = colour_video(tmp_path / "src.mp4", [("red", 2)]).read_bytes()
    for name in ["../../evil.mp4", "/etc/passwd.mp4", "..\\..\\win.mp4", "x.MP4"]:
        response = upload(client, data, name)
        assert response.status_code == 201, response.text
        video = response.json()["video"]
        assert UPLOAD_ID.fullmatch(video["id"]) and video["source"] == "upload"
        assert not {"/", "\\", "\x00", "\n"} & set(video["name"])
    folder = tmp_path / "uploads"
    stored = sorted(p.name for p in folder.iterdir())
    assert all(re.fullmatch(r"[0-9a-f]{32}\.(mp4|json)", n) for n in stored), stored
    assert len(stored) == 8
    assert not (tmp_path / "evil.mp4").exists() and not Path("/etc/passwd.mp4").exists()
    names = [v["name"] for v in client.get("/api/videos").json()["videos"]]
    assert {"evil.mp4", "passwd.mp4", "win.mp4", "x.MP4"} <= set(names)
    assert display_name("a\x00b\n\u202e.mp4") == "ab.mp4" and display_name("") == "video"
    assert display_name("C:\\Users\\me\\v.mp4") == "v.mp4" and display_name("a/") == "video"


def test_upload_limits_and_rejections_leave_no_files(client, tmp_path):
    folder = tmp_path / "uploads"
    big = b"\0" * (200 * 1024)
    assert upload(client, big).status_code == 413  # Content-Length over the limit

    def chunks():  # no Content-Length: the body is counted as it arrives
        for _ in range(20):
            yield b"\0" * 16384

    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()

    def body():
        yield head
        yield from chunks()
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post(
        "/api/videos",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    # just over the limit once the multipart overhead is taken away: refused by the store
    assert upload(client, b"\0" * (64 * 1024 + 1)).status_code == 413
    assert upload(client, b"not a video at all", "fake.mp4").status_code == 415
    assert upload(client, b"#!/bin/sh\n", "run.sh").status_code == 415
    assert upload(client, b"", "empty.mp4").status_code == 415
    assert client.post("/api/videos", content=b"raw").status_code == 415
    response = client.post("/api/videos", data={"other": "field"}, files={"x": ("a.mp4", b"1")})
    assert response.status_code == 422
    assert list(folder.iterdir()) == []  # no partial or temporary files left


# --------------------------------------------------------------------------------- path traversal
@pytest.mark.parametrize("video_id", TRAVERSAL_IDS)
def test_no_traversal_through_video_ids(client, video_id):
    for method, path in [
        ("GET", f"/api/videos/{video_id}"),
        ("GET", f"/api/videos/{video_id}/file"),
        ("POST", f"/api/videos/{video_id}/search"),
    ]:
        response = client.request(method, path, json={"queries": ["red"]})
        assert response.status_code in (404, 405), (method, path, response.status_code)
        assert "root:" not in response.text


def test_library_files_outside_the_indexed_folders_are_not_served(client, library_db, tmp_path):
    import sqlite3

    ids = ids_of(client)
    assert client.get(f"/api/videos/{ids['a.mp4']}/file").status_code == 200
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"secret")
    notes = tmp_path / "videos" / "notes.txt"
    with sqlite3.connect(library_db) as conn:  # a tampered or stale database
        conn.execute("UPDATE videos SET path=? WHERE path LIKE '%a.mp4'", (str(secret),))
        conn.execute("UPDATE videos SET path=? WHERE path LIKE '%b.mp4'", (str(notes),))
        conn.execute("UPDATE videos SET path='/etc/passwd' WHERE path LIKE '%c.mp4'")
    for name in ["a.mp4", "b.mp4", "c.mp4"]:
        assert client.get(f"/api/videos/{ids[name]}/file").status_code == 404
        assert client.get(f"/api/videos/{ids[name]}").status_code == 404
    # a link in the upload folder named like an upload is not served either
    link = tmp_path / "uploads" / f"{'ab' * 16}.mp4"
    link.symlink_to(secret)
    assert client.get(f"/api/videos/u-{'ab' * 16}/file").status_code == 404


# ---------------------------------------------------------------------------------- video bytes
def test_video_bytes_support_ranges(client, tmp_path):
    ids = ids_of(client)
    raw = (tmp_path / "videos" / "a.mp4").read_bytes()
    url = f"/api/videos/{ids['a.mp4']}/file"
    full = client.get(url)
    assert full.status_code == 200 and full.content == raw
    assert full.headers["accept-ranges"] == "bytes" and full.headers["content-type"] == "video/mp4"
    part = client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == raw[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(raw)}"
    assert client.get(url, headers={"Range": "bytes=-10"}).content == raw[-10:]
    assert client.get(url, headers={"Range": f"bytes={len(raw) + 5}-"}).status_code == 416


# ---------------------------------------------------------------------------------------- search
def test_search_video_json(client):
    ids = ids_of(client)
    url = f"/api/videos/{ids['a.mp4']}/search"
    response = client.post(url, json={"queries": ["red", "blue"], "top_k": 3})
    assert response.status_code == 200, response.text
    data = response.json()
    assert set(data) == {"video", "results", "seconds"} and data["video"]["id"] == ids["a.mp4"]
    red, blue = data["results"]
    assert set(red) == {
        "query", "moments", "saliency", "clip_len", "duration", "min_relevance",
        "best_relevance", "no_confident_match",
    }  # fmt: skip
    assert red["query"] == "red" and len(red["saliency"]) == 5 and red["clip_len"] == 2.0
    assert 1 <= len(red["moments"]) <= 3
    assert (red["moments"][0]["start"], red["moments"][0]["end"]) == (6.0, 10.0)
    assert blue["moments"][0]["end"] <= 6.0
    for bad in [{"queries": []}, {"queries": ["  "]}, {"queries": ["red"], "top_k": 0}, {}]:
        assert client.post(f"/api/videos/{ids['a.mp4']}/search", json=bad).status_code == 422


def test_search_an_upload_then_the_library(client, tmp_path):
    data = colour_video(tmp_path / "up.mp4", [("green", 4), ("white", 4)]).read_bytes()
    video = upload(client, data, "mine.mp4").json()["video"]
    result = client.post(f"/api/videos/{video['id']}/search", json={"queries": ["white"]}).json()
    assert result["results"][0]["moments"][0]["start"] == 4.0
    lib = client.post("/api/search", json={"query": "green", "top_k": 4}).json()
    assert set(lib) == {
        "query", "moments", "videos", "timings", "min_relevance", "best_relevance",
        "no_confident_match",
    }  # fmt: skip
    assert lib["moments"][0]["name"] == "b.mp4"
    assert lib["moments"][0]["video"] == ids_of(client)["b.mp4"]
    assert lib["moments"][0]["url"].endswith("/file")
    assert '"path"' not in json.dumps(lib) and str(tmp_path) not in json.dumps(lib)
    assert len(lib["videos"][0]["saliency"]) == 5
    assert client.post("/api/search", json={"query": ""}).status_code == 422


def test_upload_only_server(tmp_path):
    service = colour_service(tmp_path, None)
    with TestClient(create_app(service, encoder="clip:colour-test"), base_url=BASE_URL) as c:
        assert c.get("/api/info").json()["library"] is None
        assert c.get("/api/videos").json() == {"videos": []}
        assert c.post("/api/search", json={"query": "red"}).status_code == 404
        data = colour_video(tmp_path / "v.mp4", [("blue", 2), ("red", 2)]).read_bytes()
        vid = upload(c, data).json()["video"]["id"]
        out = c.post(f"/api/videos/{vid}/search", json={"queries": ["red"]}).json()
        assert out["results"][0]["moments"][0]["start"] == 2.0
        assert c.get("/api/videos/l-1/file").status_code == 404


# ------------------------------------------------------------------------------ a real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL and
    stops the server on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


def raw_get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of ``..``)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_real_server_refuses_raw_traversal_and_serves_ranges(tmp_path, library_db):
    service = colour_service(tmp_path, library_db)
    with running_server(create_app(service)) as base:
        a_id = next(v.id for v in service.videos() if v.name == "a.mp4")
        raw = (tmp_path / "videos" / "a.mp4").read_bytes()
        status, body = raw_get(base, f"/api/videos/{a_id}/file", {"Range": "bytes=0-9"})
        assert status == 206 and body == raw[:10]
        for path in [
            "/static/../../../../etc/passwd",
            "/static/..%2f..%2f..%2fetc%2fpasswd",
            "/static/%2e%2e/%2e%2e/pyproject.toml",
            "/api/videos/../../../etc/passwd/file",
            "/api/videos/..%2f..%2fetc%2fpasswd/file",
            f"/api/videos/{a_id}/../../../etc/passwd",
            "//etc/passwd",
            "/api/videos/%2Fetc%2Fpasswd/file",
        ]:
            status, body = raw_get(base, path)
            assert status == 404, (path, status)
            assert b"root:" not in body
    service.library.close()  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------- CLI
def test_serve_cli_arguments():
    from momentkit.cli import serve
    from momentkit.utils.errors import MomentkitError

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.max_upload_mb, args.db) == ("127.0.0.1", 8000, 200.0, None)
    for bad in (["--max-upload-mb", "0"], ["--port", "70000"]):  # usage errors (argparse)
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(MomentkitError, match="--max-upload-mb"):  # run() checks on its own
        serve.run(argparse.Namespace(**{**vars(args), "max_upload_mb": 0.0}))
    with pytest.raises(MomentkitError, match="--port"):
        serve.run(argparse.Namespace(**{**vars(args), "port": 70000}))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


def test_relevance_threshold_and_full_precision(client):
    """``min_relevance`` reaches the predictor and the engine; a search with no moment above it
    says so; numbers are the predictor's own, unrounded."""
    url = f"/api/videos/{ids_of(client)['a.mp4']}/search"
    plain = client.post(url, json={"queries": ["red"], "top_k": 3}).json()["results"][0]
    service = client.service  # type: ignore[attr-defined]
    ref = service.resolve(ids_of(client)["a.mp4"])
    (want,) = service.predictor().predict(service._encoding(ref), ["red"], top_k=3)
    assert [m["score"] for m in plain["moments"]] == [float(m.score) for m in want.moments]
    assert [m["relevance"] for m in plain["moments"]] == [m.relevance for m in want.moments]
    best = plain["moments"][0]["relevance"]
    kept = client.post(url, json={"queries": ["red"], "min_relevance": best}).json()["results"][0]
    assert kept["moments"] and all(m["relevance"] >= best for m in kept["moments"])
    assert not kept["no_confident_match"] and kept["min_relevance"] == best
    # "white" is nowhere in a.mp4: no moment is confident at the top of the scale
    none = client.post(url, json={"queries": ["white"], "min_relevance": 1.0}).json()
    white = none["results"][0]
    assert white["best_relevance"] < 1.0 and white["moments"] == []
    assert white["no_confident_match"]
    # green is all of b.mp4 and nowhere else: only b's moment is left above 0.5
    lib = client.post("/api/search", json={"query": "green", "min_relevance": 0.5}).json()
    assert lib["min_relevance"] == 0.5 and not lib["no_confident_match"]
    assert [m["name"] for m in lib["moments"]] == ["b.mp4"]
    assert lib["moments"][0]["relevance"] >= 0.5
    for bad in (-0.1, 1.5, "high"):
        assert client.post(url, json={"queries": ["red"], "min_relevance": bad}).status_code == 422
        assert (
            client.post("/api/search", json={"query": "r", "min_relevance": bad}).status_code == 422
        )
