"""End to end in a real browser: JupyterLab, the quickstart notebook, the MergeLab panel.

Debian's Chromium (/usr/bin/chromium) driven by Playwright for Python; no browser is ever
downloaded. Without Chromium the test is skipped, except where LWMM_REQUIRE_BROWSER=1
(``make test`` and CI set it): there a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
KERNEL_IDLE = """() => {
    const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return k && k.status === 'idle';
}"""
IMAGES = """() => Array.from(document.querySelectorAll('.js-plotly-plot image'))
    .map(e => e.getAttribute('href')).join('|')"""
#: Texts of the outputs cut to "...", plots wider than the output column they sit in, and
#: control descriptions stacked above their controls instead of beside them.
CUT = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output *'))
    .filter(e => getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth)
    .map(e => e.textContent.trim())"""
WIDER = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).filter(e => {
    const column = e.closest('.jp-OutputArea-output').getBoundingClientRect();
    return e.querySelector('.main-svg').getBoundingClientRect().right > column.right + 1;
}).map(e => (e.querySelector('.gtitle') || {}).textContent)"""
ABOVE = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output .widget-label'))
    .filter(l => l.textContent.trim() && l.nextElementSibling && l.offsetParent !== null
        && l.getBoundingClientRect().bottom <= l.nextElementSibling.getBoundingClientRect().top)
    .map(l => l.textContent.trim())"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_lab(quick_zoo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt install chromium)"
        if os.environ.get("LWMM_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "notebooks", root / "notebooks")  # the lab saves: never the repo's
    port = _free_port()
    env = os.environ | {
        "LWMM_ZOO": str(quick_zoo),
        "LWMM_DATA": str(root / "data"),
        "JUPYTER_CONFIG_DIR": str(root / "config"),
        "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
        "TQDM_DISABLE": "1",
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--IdentityProvider.token=", "--ServerApp.password=",
        "--ServerApp.allow_root=True", f"--ServerApp.root_dir={root / 'notebooks'}",
        f"--LabApp.user_settings_dir={root / 'settings'}", f"--LabApp.workspaces_dir={root / 'ws'}",
        f"--LabApp.app_settings_dir={REPO / 'lwmm_lab' / 'lab_settings'}",
        "--LabApp.expose_app_in_browser=True",
    ]  # fmt: skip
    log = open(root / "lab.log", "w")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start: {(root / 'lab.log').read_text()[-2000:]}")
        yield url
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_quickstart_merge_lab_in_chromium(jupyter_lab: str) -> None:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{jupyter_lab}/lab/tree/01_quickstart.ipynb")
        page.wait_for_function(KERNEL_IDLE, timeout=180_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_selector(".widget-slider", timeout=180_000)
        page.wait_for_selector(".js-plotly-plot", timeout=180_000)
        page.wait_for_function(
            "() => (document.querySelector('.lwmm-miou') || {}).textContent", timeout=180_000
        )
        page.wait_for_function(f"() => ({IMAGES})().split('|').length >= 15", timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "lab-before.png"), full_page=True)
        assert page.evaluate(CUT) == [], "texts cut to '...'"
        assert page.evaluate(WIDER) == [], "plots wider than the output column"
        assert page.evaluate(ABOVE) == [], "control descriptions above their controls"
        miou, images = page.inner_text(".lwmm-miou"), page.evaluate(IMAGES)

        alpha = page.locator(".widget-slider", has=page.locator(".widget-label", has_text="alpha"))
        before = alpha.locator(".widget-readout").inner_text()
        alpha.locator(".noUi-handle").focus()
        page.keyboard.press("End")  # alpha = 1: the merge becomes the anchor
        page.wait_for_function(
            f"() => document.querySelector('.lwmm-miou').textContent !== {miou!r}", timeout=60_000
        )
        page.wait_for_function(f"() => ({IMAGES})() !== {images!r}", timeout=60_000)
        assert alpha.locator(".widget-readout").inner_text() == "1.00" != before
        assert "+0.00" in page.locator(".lwmm-miou").locator("..").inner_text()
        page.screenshot(path=str(ARTIFACTS / "lab-after.png"), full_page=True)
        browser.close()
