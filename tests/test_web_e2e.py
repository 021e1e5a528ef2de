"""End to end in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The server runs on 127.0.0.1 with the real zero-shot ``offline`` predictor and a library of two
videos made from the Charades demo clip (a copy, and its last 22 s re-encoded). The browser
uploads the demo clip, searches it, checks the timeline (saliency curve + moments), plays a
moment (the video seeks to its start and pauses at its end), then searches the library and
plays a result from a library video.

Set ``MOMENTKIT_WRITE_SCREENSHOT=1`` to save the final page as ``docs/screenshot.png``.
Install: ``apt-get install -y chromium && pip install playwright`` (Playwright's own browser
download is not needed; ``MOMENTKIT_CHROMIUM`` may name another Chromium binary).
"""

from __future__ import annotations

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
DEMO = REPO.parent / "shared" / "media" / "charades_demo.mp4"
QUERY = "a person drinks from a cup"


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

            # search the whole library and play a result from one of its videos
            page.click("#search-library")
            page.wait_for_selector("#library-results .library-moment", timeout=60_000)
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
            shot = (
                REPO / "docs" / "screenshot.png"
                if os.environ.get("MOMENTKIT_WRITE_SCREENSHOT") == "1"
                else tmp / "screenshot.png"
            )
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert errors == [], errors
