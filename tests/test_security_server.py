"""The attacks of the hardening review (issue 32) on ``momentkit serve``, each kept as a test.

1. A 1.4 KB upload declaring 1000 hours held the model lock for ever: refused at upload (413)
   and by ``momentkit index`` (which goes on and reports it); a search on such a file (cap
   off) stops at its time budget (504) while other searches go on, waiting ones get 503 with
   ``Retry-After``, and the server stops within seconds.
2. DNS rebinding (``Host: rebind.evil.example``) read the library; a cross-origin upload was
   stored; uploads filled the disk: 400, 403, 507.
3. ``NaN``, ``Infinity``, a lone surrogate gave 500: 422 with a reason.
4. ``serve --checkpoint`` with a crafted config started and failed every search: it exits with
   one line before binding.
5. Uploads are written atomically under ``safe_child`` names; a read-only server says so.

Each test fails on the code before the fix (most by status code; the hanging ones by a
bounded wait). The same attacks against a real ``momentkit serve`` process:
``scripts/reliability_probe.py --server`` and ``scripts/server_load.py``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from test_library import (  # noqa: E402
    ColourEncoder,
    CountingPredictor,
    colour_predictor,
    colour_video,
    index,
    make_folder,
)
from test_serve import BASE_URL, free_port  # noqa: E402

from momentkit.cli.main import main  # noqa: E402
from momentkit.inference.predictor import TooManyClipsError  # noqa: E402
from momentkit.library import Library, LibraryStore, SearchEngine  # noqa: E402
from momentkit.serving import UploadStore, VideoService  # noqa: E402
from momentkit.serving.app import create_app  # noqa: E402
from momentkit.serving.server import (  # noqa: E402
    ServerConfig,
    allowed_hosts,
    build_service,
    make_server,
)
from momentkit.serving.service import Lane, ServiceLimits  # noqa: E402
from momentkit.video.write import write_video  # noqa: E402

HOURS_1000 = [0.0, 1_800_000.0, 3_600_000.0]


# -------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """1.4 KB, three frames spread over 1000 hours: a valid file declaring 1.8 million clips."""
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[1], frames[2] = 128, 255
    path = tmp_path_factory.mktemp("long") / "long.mkv"
    write_video(path, frames, times=HOURS_1000)
    assert path.stat().st_size < 4096
    return path


@pytest.fixture()
def library_db(tmp_path) -> Path:
    make_folder(tmp_path / "videos")
    db = tmp_path / "lib.db"
    index(db, tmp_path / "videos")
    return db


def make_service(
    tmp_path: Path, db: Path | None = None, *, store: UploadStore | None = None, **limits
) -> VideoService:
    uploads = store or UploadStore(tmp_path / "uploads", 1 << 20)
    if db is None:
        return VideoService(
            uploads, load_predictor=colour_predictor, limits=ServiceLimits(**limits)
        )
    encoder = ColourEncoder()
    return VideoService(
        uploads,
        Library(LibraryStore(db, readonly=True)),
        load_engine=lambda lib: SearchEngine(lib, encoder, colour_predictor(encoder)),
        limits=ServiceLimits(**limits),
    )


def client_for(service: VideoService, **kwargs) -> TestClient:
    app = create_app(service, encoder="clip:colour-test", **kwargs)
    return TestClient(app, base_url=BASE_URL, raise_server_exceptions=False)


@pytest.fixture()
def client(tmp_path, library_db) -> Iterator[TestClient]:
    service = make_service(tmp_path, library_db)
    with client_for(service) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c
    service.close()


def upload(client: TestClient, data: bytes, name: str = "clip.mp4", **headers: str):
    return client.post("/api/videos", files={"file": (name, data, "video/mp4")}, headers=headers)


def library_id(client: TestClient, name: str = "a.mp4") -> str:
    return next(v["id"] for v in client.get("/api/videos").json()["videos"] if v["name"] == name)


def stored(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def in_thread(func, *args) -> tuple[threading.Thread, dict]:
    """Run ``func(*args)`` on a daemon thread; the result lands in the returned dict."""
    box: dict = {}

    def run() -> None:
        start = time.monotonic()
        box["result"] = func(*args)
        box["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


# ------------------------------------------------------------ 1. a video of 1000 hours
def test_an_upload_declaring_1000_hours_is_refused_before_any_decoding(client, long_video):
    """The reported attack: 201 ``duration 3600001.0``, then one search held the server."""
    response = upload(client, long_video.read_bytes(), "long.mkv")
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "long.mkv: the video declares 1000 h 0 min (1,800,001 clips of 2 s)" in detail
    assert "over the limit of 5,400 clips per video (--max-clips)" in detail
    assert str(long_video.parent) not in detail
    assert stored(client.service.uploads.directory) == []  # type: ignore[attr-defined]
    # a normal video is still welcome
    ok = upload(client, colour_video(long_video.parent / "ok.mp4", [("red", 2)]).read_bytes())
    assert ok.status_code == 201


def test_predictor_encode_video_refuses_too_many_clips_before_decoding(long_video):
    predictor = colour_predictor()
    start = time.monotonic()
    with pytest.raises(TooManyClipsError, match=r"1,800,001 clips .* limit of 100 clips"):
        predictor.encode_video(long_video, max_clips=100)
    assert time.monotonic() - start < 5


def test_index_goes_on_past_a_video_over_the_clip_limit_and_reports_it(tmp_path, long_video):
    folder = tmp_path / "videos"
    make_folder(folder)
    (folder / "long.mkv").write_bytes(long_video.read_bytes())
    report, predictor = index(tmp_path / "lib.db", folder, max_clips=1000)
    assert sorted(p.name for p in report.added) == ["a.mp4", "b.mp4", "c.mp4"]
    assert [p.name for p in report.capped] == ["long.mkv"]
    assert [p.name for p, _ in report.failed] == ["long.mkv"]
    assert "long.mkv" not in predictor.encoded  # refused before decoding
    summary = report.summary()
    assert "over the limit of 1,000 clips per video (--max-clips)" in summary
    assert "raise --max-clips and run with --retry-failed" in summary
    assert report.to_json()["capped"] == [str(folder / "long.mkv")]


def test_index_cli_skips_the_long_file_without_loading_a_model(tmp_path, long_video, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "long.mkv").write_bytes(long_video.read_bytes())
    start = time.monotonic()
    args = ["index", str(folder), "--db", str(tmp_path / "l.db"), "--no-progress"]
    assert main(args) == 1  # the default limit (43 200 clips) refuses it
    assert time.monotonic() - start < 30
    out = capsys.readouterr().out
    assert "1,800,001 clips of 2 s), over the limit of 43,200 clips" in out
    assert "1 file(s) over the clip limit were skipped" in out
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--max-clips", "-1"])
    assert exit_info.value.code == 2
    assert "argument --max-clips: must be an integer >= 0, got '-1'" in capsys.readouterr().err


def test_a_long_search_stops_at_its_budget_and_starves_no_one(tmp_path, library_db, long_video):
    """With the cap off, one search on the 1000-hour file: it is stopped at its budget (504),
    a second search of it waits at most the queue timeout (503 + Retry-After), and searches
    of encoded videos and of the library go on meanwhile."""
    service = make_service(
        tmp_path, library_db, max_clips=None, search_timeout=1.5, queue_timeout=0.5
    )
    with client_for(service) as c:
        vid = upload(c, long_video.read_bytes(), "long.mkv").json()["video"]["id"]
        a = library_id(c)
        assert c.post(f"/api/videos/{a}/search", json={"queries": ["red"]}).status_code == 200
        long_url = f"/api/videos/{vid}/search"
        thread, box = in_thread(lambda: c.post(long_url, json={"queries": ["red"]}))
        deadline = time.monotonic() + 10
        while not service.encode_lane.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.encode_lane.busy
        # meanwhile: the library and an encoded video answer at once
        t0 = time.monotonic()
        assert c.post("/api/search", json={"query": "green"}).status_code == 200
        assert c.post(f"/api/videos/{a}/search", json={"queries": ["red"]}).status_code == 200
        assert c.get("/api/videos").status_code == 200
        assert time.monotonic() - t0 < 5
        # a second search of the long video waits at most the queue timeout
        busy = c.post(long_url, json={"queries": ["blue"]})
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
        assert "busy encoding another video" in busy.json()["detail"]
        thread.join(timeout=30)
        assert not thread.is_alive(), "the long search did not stop at its budget"
        response = box["result"]
        assert response.status_code == 504, response.text
        assert "budget of 1.5 s per search (--search-timeout)" in response.json()["detail"]
        assert box["seconds"] < 1.5 + 2.0 + 3.0
        deadline = time.monotonic() + 30  # the worker notices the deadline between batches
        while service.encode_lane.busy and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not service.encode_lane.busy, "the encoding went on past its budget"
    service.close()


def test_lanes_hand_over_in_order_and_time_out():
    lane = Lane("query")
    assert lane.acquire(0.1)
    assert not lane.acquire(0.05)  # taken
    order: list[str] = []

    async def waiter(name: str, timeout: float) -> None:
        if await lane.acquire_async(timeout):
            order.append(name)
            lane.release()

    async def scenario() -> None:
        tasks = [asyncio.create_task(waiter(n, 2.0)) for n in "abc"]
        late = asyncio.create_task(waiter("late", 0.05))
        cancelled = asyncio.create_task(waiter("cancelled", 2.0))
        await asyncio.sleep(0.1)
        cancelled.cancel()
        assert lane.waiting == 4  # late gave up, the rest wait
        await asyncio.get_running_loop().run_in_executor(None, lane.release)
        await asyncio.gather(*tasks, late, return_exceptions=True)

    asyncio.run(scenario())
    assert order == ["a", "b", "c"] and not lane.busy

    # closing (shutdown) wakes every waiter empty-handed and refuses later ones
    assert lane.acquire(0.1)
    got: list[bool] = []

    async def closing() -> None:
        tasks = [asyncio.create_task(lane.acquire_async(30)) for _ in range(3)]
        await asyncio.sleep(0.05)
        lane.close()
        got.extend(await asyncio.gather(*tasks))

    start = time.monotonic()
    asyncio.run(closing())
    assert got == [False, False, False] and time.monotonic() - start < 5
    assert not lane.acquire(5) and lane.waiting == 0


# ------------------------------------------------------------------ 2. hosts and origins
def test_dns_rebinding_hosts_get_400(client):
    a = library_id(client)
    evil = {"Host": "rebind.evil.example"}
    listing = client.get("/api/videos", headers=evil)
    assert listing.status_code == 400 and "rebind.evil.example" in listing.json()["detail"]
    assert "videos" not in listing.text
    part = client.get(f"/api/videos/{a}/file", headers={**evil, "Range": "bytes=0-9"})
    assert part.status_code == 400 and part.headers["content-security-policy"]
    for host in ["rebind.evil.example:8000", "127.0.0.1.evil.example", "", "a b", "[::2]:8000"]:
        assert client.get("/api/info", headers={"Host": host}).status_code == 400, host
    for host in ["127.0.0.1:8000", "localhost:9999", "LOCALHOST", "[::1]:8000", "localhost."]:
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_of_a_server_carry_its_port(tmp_path):
    config = ServerConfig(host="0.0.0.0", port=8123, allowed_hosts=("media.lan", "nas:9000"))
    hosts = allowed_hosts(config)
    assert set(hosts) == {"0.0.0.0:8123", "localhost:8123", "127.0.0.1:8123", "[::1]:8123",
                          "media.lan:8123", "nas:9000"}  # fmt: skip
    service = make_service(tmp_path)
    with client_for(service, allowed_hosts=hosts) as c:
        assert c.get("/api/info", headers={"Host": "media.lan:8123"}).status_code == 200
        assert c.get("/api/info", headers={"Host": "127.0.0.1:8124"}).status_code == 400
        assert c.get("/api/info", headers={"Host": "media.lan"}).status_code == 400  # port 80
    with client_for(service, allowed_hosts=("*",)) as c:
        assert c.get("/api/info", headers={"Host": "anything.example"}).status_code == 200
        cross = c.post("/api/search", json={"query": "x"}, headers={
            "Host": "anything.example", "Origin": "http://evil.example"})  # fmt: skip
        assert cross.status_code == 403
    with pytest.raises(ValueError, match="not a host name"):
        create_app(service, allowed_hosts=("http://x/",))


def test_cross_origin_writes_get_403_and_store_nothing(client, tmp_path):
    data = colour_video(tmp_path / "src.mp4", [("red", 2)]).read_bytes()
    folder = client.service.uploads.directory  # type: ignore[attr-defined]
    for headers in [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:8000.evil.example"},
        {"Origin": "http://127.0.0.1:9000"},  # another local site
        {"Referer": "http://evil.example/page.html"},
        {"Sec-Fetch-Site": "cross-site"},
    ]:
        response = upload(client, data, **headers)
        assert response.status_code == 403, (headers, response.text)
        assert "cross-origin POST refused" in response.json()["detail"]
    assert stored(folder) == []
    url = f"/api/videos/{library_id(client)}/search"
    evil = {"Origin": "http://evil.example"}
    assert client.post(url, json={"queries": ["red"]}, headers=evil).status_code == 403
    assert client.post("/api/search", json={"query": "red"}, headers=evil).status_code == 403
    # the page itself (same origin), and clients without Origin (curl), are served
    ok = upload(client, data, Origin=BASE_URL, **{"Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 201
    vid = ok.json()["video"]["id"]
    assert upload(client, data, Referer=f"{BASE_URL}/").status_code == 201
    assert client.delete(f"/api/videos/{vid}", headers=evil).status_code == 403
    assert client.delete(f"/api/videos/{vid}", headers={"Origin": BASE_URL}).status_code == 204
    assert client.get(f"/api/videos/{vid}").status_code == 404


def test_upload_storage_is_capped_and_says_what_to_delete(tmp_path):
    data = colour_video(tmp_path / "src.mp4", [("red", 4)]).read_bytes()
    store = UploadStore(tmp_path / "uploads", 1 << 20, max_total_bytes=3 * len(data) + 500)
    service = make_service(tmp_path, store=store)
    with client_for(service) as c:
        first = upload(c, data, "first.mp4").json()["video"]["id"]
        for name in ["second.mp4", "third.mp4"]:
            assert upload(c, data, name).status_code == 201
        full = upload(c, data, "fourth.mp4")
        assert full.status_code == 507, full.text
        detail = full.json()["detail"]
        assert "--max-upload-storage" in detail and "DELETE /api/videos/<id>" in detail
        assert f"'first.mp4' ({first}" in detail
        assert len([n for n in stored(store.directory) if n.endswith(".mp4")]) == 3
        assert not [n for n in stored(store.directory) if n.startswith(".")]
        # a declared length that cannot fit is refused before the body is read
        big = c.post("/api/videos", content=b"x" * 1000, headers={
            "Content-Type": "multipart/form-data; boundary=x",
            "Content-Length": str(512 * 1024)})  # fmt: skip
        assert big.status_code == 507
        assert c.delete(f"/api/videos/{first}").status_code == 204
        assert upload(c, data, "fourth.mp4").status_code == 201
        assert c.get("/api/info").json()["max_upload_storage_mb"] == round(
            store.max_total_bytes / 2**20, 6
        )
    service.close()


# ---------------------------------------------------------------------- 3. bad JSON values
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/search", '{"query": "a", "top_k": NaN}', "top_k"),
        ("/api/search", '{"query": "a", "top_k": Infinity}', "top_k"),
        ("/api/search", '{"query": "a", "top_k": -Infinity}', "top_k"),
        ("/api/search", '{"query": "a", "top_k": 1e400}', "top_k"),
        ("/api/search", '{"query": "a", "top_k": 3.5}', "top_k"),
        ("/api/search", '{"query": "a", "top_k": true}', "top_k"),
        ("/api/search", '{"query": "a", "top_k": 1000000000000}', "top_k"),
        ("/api/search", '{"query": "a", "min_relevance": NaN}', "min_relevance"),
        ("/api/search", '{"query": "a", "videos": NaN}', "videos"),
        ("/api/search", '{"query": "\\ud800"}', "query"),
        ("/api/search", '{"query": "a\\u0000b"}', "query"),
        ("/api/search", '{"query": "a", "topk": 3}', "topk"),
        ("/api/search", '{"query": ["a"]}', "query"),
        ("/api/search", '{"query": "' + "x" * 501 + '"}', "query"),
        ("VIDEO", '{"queries": [NaN]}', "queries.0"),
        ("VIDEO", '{"queries": ["\\ud800"]}', "queries.0"),
        ("VIDEO", '{"queries": ["\\udfff x"]}', "queries.0"),
        ("VIDEO", '{"queries": ["a"], "top_k": NaN}', "top_k"),
        ("VIDEO", '{"queries": ["a"], "min_relevance": Infinity}', "min_relevance"),
        ("VIDEO", '{"queries": ' + json.dumps(["a"] * 21) + "}", "queries"),
        ("VIDEO", '{"queries": "a"}', "queries"),
    ],
)
def test_bad_json_values_get_422_with_a_reason(client, path, body, field):
    """Before: 500 (the validation error echoed NaN or a lone surrogate, which JSON and UTF-8
    cannot carry)."""
    if path == "VIDEO":
        path = f"/api/videos/{library_id(client)}/search"
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    data = response.json()
    assert isinstance(data["detail"], str) and data["detail"].startswith(f"{field}: ")
    assert data["errors"][0]["field"] == field


def test_oversized_and_malformed_bodies_get_4xx(client):
    url = f"/api/videos/{library_id(client)}/search"
    big = json.dumps({"queries": ["red"], "pad": "x" * 70_000})
    for body, status in [
        (big, 413),
        ('{"query": ' + "[" * 20_000 + "]" * 20_000 + "}", 400),
        ('{"query": "a"', 422),
        ("\xff\xfe", 422),
    ]:
        response = client.post(
            "/api/search", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == status, (body[:30], response.text)
        assert isinstance(response.json()["detail"], str | list)

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 10_000

    response = client.post(url, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_bad_ranges_are_json_errors(client):
    url = f"/api/videos/{library_id(client)}/file"
    for header, status in [("bytes=abc", 400), ("bytes=5-1", 400), ("bytes=99999999-", 416)]:
        response = client.get(url, headers={"Range": header})
        assert response.status_code == status, header
        assert response.headers["content-type"] == "application/json"
        assert isinstance(response.json()["detail"], str) and response.json()["detail"]
    assert client.get(url, headers={"Range": "bytes=99999999-"}).headers["content-range"]


def test_an_unexpected_error_is_a_json_line_without_a_traceback(client, monkeypatch):
    async def boom(*args, **kwargs):
        raise RuntimeError("secret detail /srv/private/path")

    monkeypatch.setattr(client.service, "search_library_async", boom)
    response = client.post("/api/search", json={"query": "red"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "internal error (RuntimeError); the server's log has the details"
    }
    assert "Traceback" not in response.text and "/srv/private" not in response.text


# ------------------------------------------------------------- 4. crafted checkpoints
@pytest.fixture()
def toy_run(tmp_path) -> Path:
    from test_predictor import make_run

    return make_run(tmp_path / "toy")


def _no_server(monkeypatch) -> list[str]:
    """Record (and refuse) any attempt to bind or run a server."""
    import uvicorn

    from momentkit.serving import server

    started: list[str] = []

    def refuse(*args, **kwargs):
        started.append("started")
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setattr(uvicorn.Server, "run", refuse)
    monkeypatch.setattr(server, "bind_socket", refuse)
    return started


@pytest.mark.parametrize(
    "damage",
    [
        lambda best: _edit_config(best, dropout=2.0),
        lambda best: _edit_config(best, name="no_such_model"),
        lambda best: (best / "model.safetensors").write_bytes(b"\xff" * 64),
        lambda best: (best / "experiment.json").write_text("{"),
    ],
    ids=["dropout", "unknown_model", "garbage_weights", "experiment_json"],
)
def test_serve_with_a_crafted_checkpoint_exits_with_one_line(toy_run, damage, monkeypatch, capsys):
    started = _no_server(monkeypatch)
    damage(toy_run / "best")
    args = ["serve", "--checkpoint", str(toy_run), "--checkpoint-encoder", "toy", "--port", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("momentkit serve: error: "), err
    assert started == []  # refused before binding


def test_serve_with_a_good_checkpoint_loads_and_answers_before_binding(toy_run, monkeypatch):
    from momentkit.serving import server

    calls: list[str] = []

    def fake_bind(host, port):
        calls.append(f"bind {host}:{port}")
        raise KeyboardInterrupt  # stop here: the models were loaded and answered

    monkeypatch.setattr(server, "bind_socket", fake_bind)
    args = ["serve", "--checkpoint", str(toy_run), "--checkpoint-encoder", "toy", "--port", "8765"]
    assert main(args) == 130
    assert calls == ["bind 127.0.0.1:8765"]


def _edit_config(best: Path, **values: object) -> None:
    config = json.loads((best / "config.json").read_text())
    config.update(values)
    (best / "config.json").write_text(json.dumps(config))


def test_serve_checks_its_limits(capsys):
    from momentkit.cli import serve

    for args, message in [
        (["--max-clips", "-1"], "argument --max-clips: must be an integer >= 0"),
        (["--search-timeout", "nan"], "argument --search-timeout: must be a finite number > 0"),
        (["--queue-timeout", "0"], "argument --queue-timeout: must be a finite number > 0"),
        (["--max-upload-storage", "-5"], "--max-upload-storage: must be a finite number >= 0"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", *args])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    limits = ServiceLimits()
    assert (serve.DEFAULT_MAX_CLIPS, serve.DEFAULT_SEARCH_TIMEOUT, serve.DEFAULT_QUEUE_TIMEOUT) == (
        limits.max_clips,
        limits.search_timeout,
        limits.queue_timeout,
    )


def test_the_address_in_use_is_one_line(monkeypatch):
    import socket

    from momentkit.serving.server import bind_socket
    from momentkit.utils.errors import MomentkitError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MomentkitError, match=f"cannot listen on 127.0.0.1:{port}: .*--port"):
            bind_socket("127.0.0.1", port)


# ------------------------------------------------------------ 5. storage and read-only
def test_uploads_are_atomic_and_leave_nothing_when_a_write_fails(client, tmp_path, monkeypatch):
    import momentkit.serving.uploads as uploads_module

    data = colour_video(tmp_path / "src.mp4", [("red", 2)]).read_bytes()
    folder = client.service.uploads.directory  # type: ignore[attr-defined]

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads_module.os, "replace", disk_full)
    response = upload(client, data)
    assert response.status_code == 507 and "disk is full" in response.json()["detail"]
    assert stored(folder) == []  # neither the temporary file nor the sidecar
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(uploads_module.tempfile, "mkstemp", read_only)
    response = upload(client, data)
    assert response.status_code == 507
    assert "cannot write its upload folder" in response.json()["detail"]
    assert str(folder) not in response.text


def test_a_read_only_server_refuses_uploads_and_says_so(tmp_path, library_db):
    config = ServerConfig(db=library_db, read_only=True)
    service = build_service(config, tmp_path / "uploads")
    assert service.library is not None and service.library.store.readonly
    with client_for(service) as c:
        data = colour_video(tmp_path / "src.mp4", [("red", 2)]).read_bytes()
        response = upload(c, data)
        assert response.status_code == 403 and "read-only" in response.json()["detail"]
        assert c.get("/api/info").json()["read_only"] is True
        assert c.get("/api/videos").status_code == 200
    assert not (tmp_path / "uploads").exists()
    service.close()


def test_stale_temporary_uploads_are_removed_and_not_counted(tmp_path):
    folder = tmp_path / "uploads"
    folder.mkdir()
    stale = folder / ".upload-crash.mp4"
    stale.write_bytes(b"x" * 1000)
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh = folder / ".upload-now.mp4"
    fresh.write_bytes(b"x" * 1000)
    store = UploadStore(folder, 1 << 20, max_total_bytes=10_000)
    assert not stale.exists() and fresh.exists()
    assert store.usage() == 0 and store.room() == 10_000


# --------------------------------------------------------------------------- 6. shutdown
def test_sigterm_stops_a_server_busy_with_a_long_search_within_seconds(
    tmp_path, long_video, library_db
):
    """Before: the model lock held by the 1000-hour search kept the process alive."""
    import httpx

    service = make_service(
        tmp_path, library_db, max_clips=None, search_timeout=600, queue_timeout=600
    )
    port = free_port()
    config = ServerConfig(port=port, shutdown_timeout=1.0)
    server = make_server(create_app(service), service, config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as http:
        files = {"file": ("long.mkv", long_video.read_bytes(), "video/x-matroska")}
        vid = http.post("/api/videos", files=files).json()["video"]["id"]

        def long_search():
            try:
                return http.post(f"/api/videos/{vid}/search", json={"queries": ["red"]})
            except httpx.HTTPError as e:  # closed by the shutdown
                return e

        searching, box = in_thread(long_search)
        while not service.encode_lane.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.encode_lane.busy
        waiting, waiting_box = in_thread(long_search)  # queued behind it (600 s queue timeout)
        while not service.encode_lane.waiting and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.encode_lane.waiting == 1
        start = time.monotonic()
        server.handle_exit(15, None)  # what uvicorn's SIGTERM handler calls
        thread.join(timeout=15)
        assert not thread.is_alive(), "the server did not stop"
        assert time.monotonic() - start < 5
        for t, b in [(searching, box), (waiting, waiting_box)]:
            t.join(timeout=15)
            result = b["result"]
            assert result.status_code == 503, result  # answered, not cut off
            assert result.json() == {"detail": "the server is shutting down"}
            assert b["seconds"] < 600
    deadline = time.monotonic() + 30
    while service.encode_lane.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not service.encode_lane.busy  # the worker stopped too
    service.close()


def test_the_index_predictor_is_not_loaded_for_a_capped_file(tmp_path, long_video):
    """The cap is checked on the file before the (lazily built) predictor is asked for."""
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "long.mkv").write_bytes(long_video.read_bytes())
    built: list[int] = []

    def factory():
        built.append(1)
        return CountingPredictor()

    from momentkit.library import Indexer

    with LibraryStore(tmp_path / "lib.db", create=True) as store:
        report = Indexer(store, "clip:colour-test", 2.0, factory, progress=False,
                         max_clips=10).run(folder)  # fmt: skip
    assert report.capped and built == []
