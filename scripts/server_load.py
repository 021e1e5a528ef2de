#!/usr/bin/env python3
"""Bounded load test of a real ``momentkit serve`` process, on 127.0.0.1 only (not run by CI).

::

    python scripts/server_load.py                       # 50 concurrent, 200 searches a phase
    python scripts/server_load.py --concurrency 50 --requests 300 --json load.json

It builds a library of two videos (the Charades demo clip and a re-encoded cut of it) with
``momentkit index``, writes the 1.4 KB ``.mkv`` of three frames that declares 1000 hours, and
runs two servers in turn, each a ``python -m momentkit serve`` subprocess on a free port of
127.0.0.1 (no other address is ever contacted):

A. default settings: start-up time, the 1000-hour upload (must be refused, 413), a bounded
   batch of concurrent searches (library and per-video, mixed), then SIGTERM-to-exit time;
B. the clip cap off (``--max-clips 0``) and a short ``--search-timeout``: the 1000-hour file is
   uploaded and searched; while that search works, the same batch of concurrent searches runs;
   then the long search's answer (504 at its budget), a second search of it while the first
   still holds the encoder (503 + ``Retry-After``), and SIGTERM while a long search runs.

Every request has a client timeout (a "hang" is one that hits it), every phase a bounded
number of requests, and the servers are stopped (SIGKILL after 30 s) whatever happens. Prints
median / p95 / max latency and status counts per phase; ``--json`` keeps them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"  # the only address this script talks to
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "momentkit" / "examples" / "charades_demo.mp4"
QUERIES = [
    "a person drinks from a cup",
    "a person sits down",
    "someone opens a door",
    "a person walks through the room",
    "a person holds a phone",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def momentkit(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "momentkit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def build_workspace(w: Path) -> dict[str, Path]:
    """A two-video library and the 1000-hour file."""
    import numpy as np

    from momentkit.video import cut_clip
    from momentkit.video.write import write_video

    vids = w / "library"
    vids.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO, vids / "kitchen_morning.mp4")
    if not (vids / "kitchen_evening.mp4").exists():
        cut_clip(DEMO, 8.0, 31.0, vids / "kitchen_evening.mp4", reencode=True)
    r = momentkit(["index", str(vids), "--db", str(w / "lib.db"), "--no-progress"], w)
    if r.returncode:
        raise SystemExit(f"index failed:\n{r.stderr}")
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    frames[1], frames[2] = 128, 255
    long = write_video(w / "long.mkv", frames, times=[0, 1_800_000, 3_600_000])
    return {"db": w / "lib.db", "long": long}


class Server:
    """``momentkit serve`` on 127.0.0.1 in a subprocess; always stopped on exit."""

    def __init__(self, w: Path, name: str, args: list[str]) -> None:
        self.port = free_port()
        self.base = f"http://{LOOPBACK}:{self.port}"
        self.log = w / f"serve_{name}.log"
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        command = [sys.executable, "-m", "momentkit", "serve", "--host", LOOPBACK]
        command += ["--port", str(self.port), "--upload-dir", str(w / f"uploads_{name}"), *args]
        self._log = self.log.open("w")
        start = time.monotonic()
        self.proc = subprocess.Popen(command, cwd=w, env=env, stdout=self._log, stderr=self._log)
        self.ready_seconds = self._wait_ready(start, 300)

    def _wait_ready(self, start: float, timeout: float) -> float:
        import httpx

        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/api/info", timeout=2).status_code == 200:
                    return time.monotonic() - start
            time.sleep(0.2)
        self.kill()
        raise SystemExit(f"the server was not ready after {timeout} s")

    def sigterm(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM, then the seconds until the process exits (SIGKILL after ``timeout``)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
            return {"exit_seconds": round(time.monotonic() - start, 2), "rc": rc, "killed": False}
        except subprocess.TimeoutExpired:
            self.kill()
            return {"exit_seconds": None, "rc": None, "killed": True}
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def server(w: Path, name: str, args: list[str]) -> Iterator[Server]:
    s = Server(w, name, args)
    try:
        yield s
    finally:
        s.kill()


def timed(client: Any, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One request: status (or ``hang``/``error``), seconds, Retry-After."""
    import httpx

    start = time.monotonic()
    try:
        r = client.request(method, path, **kwargs)
        status: int | str = r.status_code
        retry = r.headers.get("retry-after")
        detail = None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:  # not JSON: counted as an error below
                status, detail = "error", r.text[:100]
    except httpx.TimeoutException:
        status, retry, detail = "hang", None, None
    except httpx.HTTPError as e:
        status, retry, detail = "error", None, type(e).__name__
    return {
        "status": status,
        "seconds": time.monotonic() - start,
        "retry_after": retry,
        "detail": detail,
    }


def search_mix(n: int, video_ids: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """``n`` searches: library searches and per-video searches of library videos, alternated."""
    out = []
    for i in range(n):
        query = QUERIES[i % len(QUERIES)]
        if i % 2 == 0:
            out.append(("POST", "/api/search", {"query": query, "top_k": 5}))
        else:
            vid = video_ids[(i // 2) % len(video_ids)]
            out.append(("POST", f"/api/videos/{vid}/search", {"queries": [query], "top_k": 5}))
    return out


def load(base: str, n: int, concurrency: int, video_ids: list[str], timeout: float) -> dict:
    """``n`` searches, ``concurrency`` at a time; latency figures and status counts."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base, timeout=timeout, limits=limits) as client:
        work = search_mix(n, video_ids)
        start = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda r: timed(client, r[0], r[1], json=r[2]), work))
        wall = time.monotonic() - start
    return summarize(results, wall)


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = sorted(r["seconds"] for r in results if r["status"] == 200)
    every = sorted(r["seconds"] for r in results)
    counts = Counter(str(r["status"]) for r in results)

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {
        "requests": len(results),
        "statuses": dict(sorted(counts.items())),
        "ok": len(ok),
        "busy_503": counts.get("503", 0),  # refused with Retry-After after the queue timeout
        "with_retry_after": sum(1 for r in results if r["status"] == 503 and r["retry_after"]),
        "timeouts_504": counts.get("504", 0),
        "errors": sum(
            1
            for r in results
            if r["status"] == "error"
            or (
                isinstance(r["status"], int)
                and r["status"] >= 500
                and r["status"] not in (503, 504)
            )
        ),
        "hangs": counts.get("hang", 0),
        "median_s": round(statistics.median(every), 3) if every else None,
        "p95_s": pct(every, 0.95),
        "max_s": round(max(every), 3) if every else None,
        "ok_median_s": round(statistics.median(ok), 3) if ok else None,
        "ok_max_s": round(max(ok), 3) if ok else None,
        "wall_s": round(wall, 2),
        "throughput_per_s": round(len(results) / wall, 1) if wall else None,
    }


def upload(base: str, path: Path, timeout: float = 120) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=base, timeout=timeout) as client:
        files = {"file": (path.name, path.read_bytes(), "video/x-matroska")}
        result = timed(client, "POST", "/api/videos", files=files)
        if result["status"] == 201:
            result["id"] = client.get("/api/videos").json()["videos"][0]["id"]
    return result


def library_ids(base: str) -> list[str]:
    import httpx

    videos = httpx.get(f"{base}/api/videos", timeout=30).json()["videos"]
    return [v["id"] for v in videos if v["source"] == "library"]


def in_thread(func: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(func(*args)), daemon=True)
    thread.start()
    return thread, box


def long_search(base: str, vid: str, timeout: float) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=base, timeout=timeout) as client:
        body = {"queries": ["a person"]}
        return timed(client, "POST", f"/api/videos/{vid}/search", json=body)


def wait_busy(seconds: float = 3.0) -> None:
    time.sleep(seconds)  # the long search has taken the encoder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=50, help="searches at once (50)")
    parser.add_argument("--requests", type=int, default=200, help="searches per phase (200)")
    parser.add_argument("--timeout", type=float, default=130.0, help="client timeout (130 s)")
    parser.add_argument(
        "--search-timeout", type=float, default=60.0, help="server budget in phase B (60 s)"
    )
    parser.add_argument(
        "--queue-timeout", type=float, help="the servers' --queue-timeout (default: theirs)"
    )
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if not (1 <= args.concurrency <= 200 and 1 <= args.requests <= 2000):
        parser.error("--concurrency must be 1..200 and --requests 1..2000 (a bounded test)")

    w = args.keep or Path(tempfile.mkdtemp(prefix="momentkit-load-"))
    w.mkdir(parents=True, exist_ok=True)
    start = time.time()
    print(f"workspace {w} ...", flush=True)
    f = build_workspace(w)
    figures: dict[str, Any] = {
        "concurrency": args.concurrency,
        "requests_per_phase": args.requests,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }

    # A: default settings
    common = ["--db", str(f["db"])]
    if args.queue_timeout:
        common += ["--queue-timeout", str(args.queue_timeout)]
        figures["queue_timeout"] = args.queue_timeout
    with server(w, "a", common) as s:
        a: dict[str, Any] = {"ready_s": round(s.ready_seconds, 2)}
        print(f"A: ready in {s.ready_seconds:.1f} s", flush=True)
        up = upload(s.base, f["long"])
        a["long_upload"] = {k: up[k] for k in ("status", "seconds", "detail")}
        print(f"A: 1000-hour upload -> {up['status']} in {up['seconds']:.2f} s", flush=True)
        ids = library_ids(s.base)
        a["one_at_a_time"] = load(s.base, 10, 1, ids, args.timeout)
        print(f"A: one at a time: {json.dumps(a['one_at_a_time'])}", flush=True)
        a["load"] = load(s.base, args.requests, args.concurrency, ids, args.timeout)
        print(f"A: {json.dumps(a['load'])}", flush=True)
        a["sigterm_idle"] = s.sigterm()
        print(f"A: SIGTERM (idle) -> {a['sigterm_idle']}", flush=True)
    figures["A_default"] = a

    # B: the clip cap off, a short budget, one request on the 1000-hour file
    budget = args.search_timeout
    b_args = [*common, "--max-clips", "0", "--search-timeout", str(budget)]
    with server(w, "b", b_args) as s:
        b: dict[str, Any] = {"ready_s": round(s.ready_seconds, 2), "search_timeout": budget}
        up = upload(s.base, f["long"])
        b["long_upload"] = {k: up[k] for k in ("status", "seconds")}
        if up["status"] != 201:
            raise SystemExit(f"B: the upload was refused: {up}")
        ids = library_ids(s.base)
        long_started = time.monotonic()
        thread, long_box = in_thread(long_search, s.base, up["id"], args.timeout)
        wait_busy()
        load_start = time.monotonic()
        second_thread, second = in_thread(long_search, s.base, up["id"], args.timeout)
        b["load_during_long_search"] = load(
            s.base, args.requests, args.concurrency, ids, args.timeout
        )
        b["load_during_long_search"]["long_search_still_running_at_end"] = thread.is_alive()
        b["load_during_long_search"]["started_s_after_long_search"] = round(
            load_start - long_started, 2
        )
        print(f"B: {json.dumps(b['load_during_long_search'])}", flush=True)
        second_thread.join(args.timeout + 10)
        b["second_long_search"] = {k: second.get(k) for k in ("status", "seconds", "retry_after")}
        thread.join(args.timeout + 10)
        b["long_search"] = {k: long_box.get(k) for k in ("status", "seconds", "detail")}
        print(f"B: long search -> {b['long_search']}", flush=True)
        print(f"B: second long search -> {b['second_long_search']}", flush=True)
        # SIGTERM while a long search runs (the first one's worker may still be stopping)
        time.sleep(2.0)
        thread, box = in_thread(long_search, s.base, up["id"], args.timeout)
        wait_busy()
        b["sigterm_during_long_search"] = s.sigterm()
        thread.join(30)
        b["sigterm_during_long_search"]["long_search_answer"] = box.get("status")
        print(f"B: SIGTERM (long search running) -> {b['sigterm_during_long_search']}")
    figures["B_long_search"] = b
    figures["seconds"] = round(time.time() - start, 1)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(w, ignore_errors=True)
    bad = a["load"]["hangs"] + b["load_during_long_search"]["hangs"]
    bad += a["load"]["errors"] + b["load_during_long_search"]["errors"]
    stops = [a["sigterm_idle"], b["sigterm_during_long_search"]]
    bad += sum(1 for x in stops if x["killed"] or x["exit_seconds"] > 10)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
