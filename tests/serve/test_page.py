"""The web page in a real browser: headless Chromium (the distribution's package) driven by Playwright.
Type the token, upload a content, pick the sample style, start, watch the progress and previews, download.
Screenshots go to .artifacts/ at the top of the checkout (serve-page-running.png, serve-page-done.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from .helpers import CONTENT, TOKEN

ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
TIMEOUT_MS = 300_000
STEPS = 12


def chromium() -> str:
    """The Chromium executable: $NST_FAST_CHROMIUM, or the distribution's (apt-get install chromium)."""
    for candidate in (os.environ.get("NST_FAST_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (path := shutil.which(candidate)):
            return path
    pytest.skip("no Chromium here (apt-get install chromium, or set NST_FAST_CHROMIUM)")


@pytest.fixture
def browser_page():
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    executable = chromium()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820}, accept_downloads=True)
            yield page
        finally:
            browser.close()


def test_the_page_stylizes_an_upload_and_downloads_the_result(server, browser_page, tmp_path):
    page = browser_page
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(server.url + "/")
    assert page.title() == "nst-fast"
    page.wait_for_selector("#token-box:not([hidden])")  # the styles list needed the token: the page asks
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    (tmp_path / "content.png").write_bytes(CONTENT)
    page.set_input_files("#content-file", str(tmp_path / "content.png"))  # an upload
    page.click("#style-sample")  # a pick: the built-in painting
    page.wait_for_selector("#style-preview:not([hidden])")
    page.fill("#size", "64")
    page.fill("#steps", str(STEPS))
    page.click("#start")
    # Progress: the figures show steps, the bar moves, a preview from the stream is shown.
    page.wait_for_function("document.getElementById('progress').value >= 4")
    page.wait_for_function("document.getElementById('result').src.startsWith('data:image/jpeg')")
    assert "step" in page.inner_text("#figures") and "loss" in page.inner_text("#figures")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page-running.png"), full_page=True)
    page.wait_for_selector("#download-box:not([hidden])")
    assert page.inner_text("#status") == "Done."
    assert page.evaluate("document.getElementById('progress').value") == STEPS
    page.screenshot(path=str(ARTIFACTS / "serve-page-done.png"), full_page=True)
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(saved)
    assert saved.suffix == ".png"
    with Image.open(saved) as image:
        assert image.format == "PNG" and image.size == (64, 48)
    assert errors == []
