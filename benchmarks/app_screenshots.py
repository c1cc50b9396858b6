"""Screenshots of ``camlens app`` for docs/ and the README, taken in headless Chromium: one command.

    python benchmarks/app_screenshots.py        # writes docs/img/app.png and docs/img/app_progress.png

Starts the app in this process on a free port of 127.0.0.1 (EfficientNet-Lite0), drives Debian's chromium
through Playwright (``pip install playwright``; its own browser download is not used) and saves:

* ``app.png``: scikit-image's cat photo, Grad-CAM, Eigen-CAM and guided backprop side by side for the top-2
  classes, with their signed raw maps, the guided image and the deletion / insertion curves;
* ``app_progress.png``: a Score-CAM call in progress (progress bar, Cancel button), then cancelled.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from camlens.app import App, Workspace  # noqa: E402

SETTLED = "body[data-state=done], body[data-state=error], body[data-state=cancelled]"


def main() -> None:
    from playwright.sync_api import sync_playwright

    torch.set_num_threads(1)
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        sys.exit("chromium is not installed: apt-get install -y chromium")
    out = ROOT / "docs" / "img"
    app = App(Workspace({"efficientnet_lite0": "efficientnet_lite0"}))
    server = app.server("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(url)
            page.wait_for_selector("body[data-state=ready]", state="attached", timeout=300_000)
            page.fill("#topk", "2")
            page.check("#curves")
            page.check("input[name=method][value=eigencam]")
            page.check("input[name=method][value=guided-backprop]")
            page.evaluate("() => { document.body.dataset.state = 'waiting'; }")
            page.select_option("#demo", "chelsea")
            page.wait_for_selector(SETTLED, state="attached", timeout=600_000)
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / "app.png"), full_page=True)
            for name in ("gradcam", "eigencam", "guided-backprop"):
                page.uncheck(f"input[name=method][value={name}]")
            page.uncheck("#curves")
            page.evaluate("() => { document.body.dataset.state = 'waiting'; }")
            page.check("input[name=method][value=scorecam]")
            page.wait_for_selector("#progress:not([hidden])", state="visible", timeout=300_000)
            page.wait_for_function("() => document.getElementById('progress').value > 0", timeout=300_000)
            page.evaluate("() => window.scrollTo(0, 0)")
            page.screenshot(path=str(out / "app_progress.png"), clip={"x": 0, "y": 0, "width": 1500, "height": 820})
            page.click("#cancel")
            page.wait_for_selector(SETTLED, state="attached", timeout=300_000)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        app.close()
    print(f"wrote {out / 'app.png'} and {out / 'app_progress.png'}")


if __name__ == "__main__":
    main()
