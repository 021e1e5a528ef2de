"""End to end in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The server runs on 127.0.0.1 with the real zero-shot ``offline`` predictor and a library of two
videos made from the Charades demo clip (a copy, and its last 22 s re-encoded). The browser
uploads the demo clip, searches it, checks the timeline (saliency curve + moments), plays a
moment (the video seeks to its start and pauses at its end), downloads the moments as JSON and
CSV, searches the library with a new query (the moments panel must follow it, not keep the
previous query's moments) and plays a result from a library video; a minimum relevance above
every moment gives the "no confident match" message. A second page at 420 px width must not
overflow, and the timeline's last time label must stay inside the viewport.

Set ``MOMENTKIT_WRITE_SCREENSHOT=1`` to save the final page as ``docs/screenshot.png``, and
``MOMENTKIT_SCREENSHOT_DIR=DIR`` to keep the desktop and 420 px screenshots there.
Install: ``apt-get install -y chromium && pip install playwright`` (Playwright's own browser
download is not needed; ``MOMENTKIT_CHROMIUM`` may name another Chromium binary).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
sync_api = pytest.importorskip("playwright.sync_api")

from test_serve import running_server  # noqa: E402

from momentkit.library import Indexer, Library, LibraryStore, SearchEngine  # noqa: E402
from momentkit.serving import UploadStore, VideoService  # noqa: E402
from momentkit.serving.app import create_app  # noqa: E402
from momentkit.video import cut_clip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "momentkit" / "examples" / "charades_demo.mp4"
QUERY = "a person drinks from a cup"
NEW_QUERY = "a person sits down"


def find_chromium() -> str | None:
    """A Chromium binary: ``$MOMENTKIT_CHROMIUM``, Debian's, or one on the PATH."""
    candidates = [
        os.environ.get("MOMENTKIT_CHROMIUM"),
        "/usr/lib/chromium/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(not DEMO.is_file(), reason=f"{DEMO} is not present"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from momentkit.inference.predictor import Predictor

    tmp = tmp_path_factory.mktemp("e2e")
    videos = tmp / "library"
    videos.mkdir()
    shutil.copy(DEMO, videos / "kitchen_morning.mp4")
    cut_clip(DEMO, 8.0, 31.0, videos / "kitchen_evening.mp4", reencode=True)
    predictor = Predictor.zero_shot("offline", clip_len=2.0)
    db = tmp / "library.db"
    with LibraryStore(db, create=True) as store:
        Indexer(store, "offline", 2.0, predictor, progress=False).run(videos)
    library = Library.open(db)
    engine = SearchEngine(library, predictor.encoders[0], predictor)
    service = VideoService(
        UploadStore(tmp / "uploads", 50 * 2**20), library, load_engine=lambda lib: engine
    )
    with running_server(create_app(service, encoder="offline")) as base:
        yield base, tmp
    library.close()


def test_upload_search_timeline_play_and_library(server):
    base, tmp = server
    upload = tmp / "my demo clip.mp4"
    shutil.copy(DEMO, upload)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(base)
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("#video-list .video-item").count() == 2
            assert page.locator("#search-library").is_visible()

            # upload the demo clip; it becomes the selected video
            page.set_input_files("#file-input", str(upload))
            page.wait_for_selector(".video-item.active:has-text('my demo clip.mp4')")
            assert page.locator("#video-title").inner_text() == "my demo clip.mp4"

            # search it: moments and the saliency curve appear on the timeline
            page.fill("#query", QUERY)
            page.click("#search-video")
            page.wait_for_selector("#moments .moment", timeout=60_000)
            assert page.locator("#timeline path.sal-line").count() == 1
            assert page.locator("#timeline rect.moment").count() >= 1
            assert "moments in" in page.locator("#search-status").inner_text()

            # play the best moment: the video seeks to its start, then pauses at its end
            first = page.locator("#moments .moment").first
            start = float(first.get_attribute("data-start"))
            end = float(first.get_attribute("data-end"))
            first.click()
            page.wait_for_function(
                """([s, e]) => { const v = document.querySelector('#player');
                   return !v.seeking && v.currentTime >= s - 0.05 && v.currentTime <= e + 0.3; }""",
                arg=[start, end],
            )
            page.wait_for_function(
                """(e) => { const v = document.querySelector('#player');
                   return v.paused && Math.abs(v.currentTime - e) < 0.35; }""",
                arg=end,
                timeout=int((end - start) * 1000) + 15_000,
            )
            assert "active" in (first.get_attribute("class") or "")
            assert page.locator("#moments-for").inner_text() == f"for “{QUERY}”"
            assert "relevance 0." in page.locator("#moments .moment").first.inner_text()

            # download the moments: the JSON is the server's answer, the CSV the same numbers
            data = json.loads(downloaded(page, "#download-moments-json", ".json"))
            (result,) = data["results"]
            assert data["video"]["name"] == "my demo clip.mp4" and result["query"] == QUERY
            rows = list(csv.DictReader(io.StringIO(downloaded(page, "#download-moments-csv"))))
            assert [(float(r["start"]), float(r["end"]), float(r["score"])) for r in rows] == [
                (m["start"], m["end"], m["score"]) for m in result["moments"]
            ]
            assert [float(r["relevance"]) for r in rows] == [
                m["relevance"] for m in result["moments"]
            ]
            assert {r["query"] for r in rows} == {QUERY} and rows[0]["vid"] == "my demo clip"

            # search the whole library with a new query: the panel of this video (an upload,
            # no library candidate) must not keep the moments of the previous query
            page.fill("#query", NEW_QUERY)
            page.click("#search-library")
            page.wait_for_selector("#library-results .library-moment", timeout=60_000)
            assert page.locator("#library-for").inner_text() == f"for “{NEW_QUERY}”"
            assert page.locator("#moments .moment").count() == 0
            assert page.locator("#timeline rect.moment").count() == 0
            note = page.locator("#no-moments").inner_text()
            assert NEW_QUERY in note and "not among its candidate videos" in note
            lib_rows = list(csv.DictReader(io.StringIO(downloaded(page, "#download-library-csv"))))
            assert {r["query"] for r in lib_rows} == {NEW_QUERY}
            assert [int(r["rank"]) for r in lib_rows] == list(range(1, len(lib_rows) + 1))
            assert all(r["video"].startswith("kitchen_") for r in lib_rows)
            hit = page.locator("#library-results .library-moment").first
            video_id = hit.get_attribute("data-video")
            start = float(hit.get_attribute("data-start"))
            end = float(hit.get_attribute("data-end"))
            hit.click()
            page.wait_for_selector(f".video-item.active[data-id='{video_id}']")
            page.wait_for_function(
                """([s, e]) => { const v = document.querySelector('#player');
                   return v.readyState >= 2 && !v.seeking
                          && v.currentTime >= s - 0.05 && v.currentTime <= e + 0.3; }""",
                arg=[start, end],
            )
            assert page.locator("#video-title").inner_text().startswith("kitchen_")
            page.wait_for_function(
                "() => document.querySelector('#player').paused",
                timeout=int((end - start) * 1000) + 15_000,
            )
            # the panel now shows that library video's moments for the new query, labelled
            assert page.locator("#moments-for").inner_text() == f"for “{NEW_QUERY}”"
            assert page.locator("#moments .moment").count() >= 1
            spans = [
                (float(b.get_attribute("data-start")), float(b.get_attribute("data-end")))
                for b in page.locator("#moments .moment").all()
            ]
            assert (start, end) in spans
            shot = (
                REPO / "docs" / "screenshot.png"
                if os.environ.get("MOMENTKIT_WRITE_SCREENSHOT") == "1"
                else tmp / "screenshot.png"
            )
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            keep_screenshot(shot, "desktop.png")

            # a minimum relevance above every moment: the page says there is no confident match
            page.fill("#min-score", "0.999")
            page.click("#search-video")
            page.wait_for_selector("#no-moments:has-text('No confident match')", timeout=60_000)
            message = page.locator("#no-moments").inner_text()
            best = float(message.split("best relevance ")[1].split(" <")[0])
            assert 0.0 <= best < 0.999
            assert message == (
                f"No confident match for “{NEW_QUERY}” in this video "
                f"(best relevance {best:.3f} < 0.999)."
            )
        finally:
            browser.close()
    assert errors == [], errors


def downloaded(page, button: str, suffix: str = ".csv") -> str:
    """Click ``button`` and return the text of the file it downloads."""
    with page.expect_download() as info:
        page.click(button)
    download = info.value
    assert download.suggested_filename.startswith("momentkit-")
    assert download.suggested_filename.endswith(suffix)
    return Path(download.path()).read_text(encoding="utf-8")


def keep_screenshot(shot: Path, name: str) -> None:
    folder = os.environ.get("MOMENTKIT_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / name)


def test_narrow_page_does_not_overflow(server):
    """At 420 px the page fits the viewport and the timeline's last time label is inside it."""
    base, tmp = server
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 420, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(base)
            page.wait_for_selector("body[data-ready='1']")
            # the 30.7 s video: its last tick (0:30) lies at the right end of the timeline
            page.click(".video-item:has-text('kitchen_morning.mp4')")
            page.fill("#query", QUERY)
            page.click("#search-video")
            page.wait_for_selector("#moments .moment", timeout=60_000)
            page.click("#search-library")
            page.wait_for_selector("#library-results .library-moment", timeout=60_000)
            sizes = page.evaluate(
                """() => ({scroll: document.documentElement.scrollWidth, inner: innerWidth})"""
            )
            assert sizes["scroll"] <= sizes["inner"], sizes
            label = page.evaluate(
                """() => {
                    const ticks = [...document.querySelectorAll('#timeline .tick')];
                    const last = ticks[ticks.length - 1].getBoundingClientRect();
                    const svg = document.querySelector('#timeline').getBoundingClientRect();
                    return {text: ticks[ticks.length - 1].textContent, left: last.left,
                            right: last.right, svgRight: svg.right, inner: innerWidth};
                }"""
            )
            assert label["text"] == "0:30", label
            assert label["right"] <= label["svgRight"] <= label["inner"], label
            shot = tmp / "narrow.png"
            page.screenshot(path=str(shot), full_page=True)
            keep_screenshot(shot, "narrow-420.png")
        finally:
            browser.close()
