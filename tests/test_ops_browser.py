"""The ops page in headless Chromium while a call runs through the real server.

Needs Debian's `chromium` (apt-get install chromium chromium-driver) and the
`playwright` Python package (the `[dev]` extras; `playwright install` is NOT
used: it downloads a browser build). Skips, saying which is missing, otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from doubles import ScriptedSpeechToText
from server import running_server
from synth import caller_audio

# CI (.ci/run) sets CALLSTREAM_REQUIRE_BROWSER=1: a missing browser is then a failure, not a skip
REQUIRED = os.environ.get("CALLSTREAM_REQUIRE_BROWSER") == "1"
CHROMIUM = os.environ.get("CALLSTREAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if REQUIRED:
    import playwright.async_api as playwright_api

    assert Path(CHROMIUM).is_file(), f"CALLSTREAM_REQUIRE_BROWSER=1 but {CHROMIUM} is missing"
else:
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="the playwright package is not installed (pip install -e '.[dev]')"
    )
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            "Chromium is not installed: apt-get install chromium chromium-driver", allow_module_level=True
        )

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT_MS = 15_000


async def test_the_ops_page_follows_a_live_call_and_links_it_when_done(tmp_path):
    stt = ScriptedSpeechToText(["billing"])
    async with running_server(stt=stt) as server, playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            # log in as a person would: the form, then the page with its cookie
            response = await page.goto(f"{server.base}/ops")
            assert response is not None and response.status == 401
            await page.fill("#token", "ops-secret")
            await page.click("button[type=submit]")
            await page.wait_for_selector('body[data-feed="connected"]', timeout=WAIT_MS)
            assert page.url == f"{server.base}/ops"
            assert await page.is_visible("#no-live")

            async with server.call({"From": "+15551230000"}) as call:
                sid = call.call_sid
                card = f'#live [data-call-sid="{sid}"]'
                await page.wait_for_selector(card, timeout=WAIT_MS)
                # the caller talks over the greeting (barge-in), says "billing"
                await call.audio(caller_audio(3000, [(1500, 700)]))
                await call.silence(3000)
                await page.wait_for_selector(f"{card} .line.caller >> text=billing", timeout=WAIT_MS)
                await page.wait_for_selector(f"{card} .line.agent >> text=six digit account", timeout=WAIT_MS)
                assert await page.locator(f"{card} .line.agent.interrupted").count() == 1
                meta = await page.inner_text(f"{card} .meta")
                assert "+1555***0000" in meta and "state billing" in meta and "menu → billing" in meta
                latency = await page.inner_text(f"{card} .latency")
                assert "barge-in: " in latency and "barge-in: –" not in latency
                assert "response: " in latency and "response: –" not in latency
                assert await page.inner_text("#live-count") == "1"
                await page.screenshot(path=str(tmp_path / "ops-live.png"), full_page=True)
                for digit in "481516":
                    await call.dtmf(digit)
                await call.silence(3000)
                await call.stop()

            row = f'#recent tr[data-call-sid="{sid}"]'
            await page.wait_for_selector(row, timeout=WAIT_MS)
            await page.wait_for_selector(f"{card}", state="detached", timeout=WAIT_MS)
            assert "menu → billing → billing_done" in await page.inner_text(row)
            await page.screenshot(path=str(tmp_path / "ops-recent.png"), full_page=True)
            assert "481516" not in await page.content()
            await page.click(f"{row} a")
            await page.wait_for_url(f"{server.base}/ops/calls/{sid}", timeout=WAIT_MS)
            body = await page.inner_text("body")
            assert '"account":"***"' in body.replace(" ", "") and "481516" not in body
        finally:
            await browser.close()
    shots = os.environ.get("CALLSTREAM_SCREENSHOTS")
    if shots:  # for a person to look at: CALLSTREAM_SCREENSHOTS=out/ pytest tests/test_ops_browser.py
        for png in tmp_path.glob("*.png"):
            shutil.copy(png, Path(shots) / png.name)
