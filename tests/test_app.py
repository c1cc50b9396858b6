"""camlens app: the engine's results and caches, the server's limits over plain HTTP, and the page in Chromium.

The HTTP tests run a real server on a free port of 127.0.0.1 with a tiny GAP net (tests/nets.py), so they
cost milliseconds; the browser tests drive Debian's headless Chromium through Playwright on the real
EfficientNet-Lite0 and scikit-image's cat photo, and skip cleanly when either is missing.
"""

from __future__ import annotations

import http.client
import io
import json
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from camlens import geometry
from camlens._perturb import Cancelled, observe
from camlens.app import App, Limits, RequestError, Workspace
from camlens.zoo import ModelBundle, preprocess_with_geometry
from tests.nets import GapNet

CLASSES = ["apple", "banana", "cherry", "date", "elderberry"]


class Gated(GapNet):
    """A GapNet whose forwards of more than one row wait for ``gate`` (perturbation chunks), and which counts
    its forwards: a request can be held mid-call, and a test can tell how many forwards a request cost."""

    def __init__(self) -> None:
        super().__init__(channels=8, classes=5, seed=3)
        self.gate = threading.Event()
        self.gate.set()
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if x.shape[0] > 1:
            self.gate.wait(30)
        return super().forward(x)


def _bundle(model: torch.nn.Module | None = None) -> ModelBundle:
    return ModelBundle(model or Gated(), "tiny", size=32, classes=list(CLASSES))


def _png_bytes(size: tuple[int, int] = (48, 40), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _claimed_png(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed): an image bomb's header."""
    data = bytearray(_png_bytes((1, 1)))
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    return bytes(data)


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------------ engine


def test_engine_pictures_come_from_the_one_geometry_path_and_caches_save_forwards() -> None:
    model = Gated()
    ws = Workspace({"tiny": _bundle(model)})
    photo_id, photo = ws.add_upload(_png_bytes((48, 40)), "leaf.png")
    ask = {"photo": photo_id, "model": "tiny", "methods": ["gradcam"], "topk": 2, "threshold": 0.2}
    out = ws.explain(ask)
    (entry,) = out.doc["methods"]
    assert not entry["cached"]
    # the targets are the model's top-2 on this photo, ids from one plain forward
    x, _ = preprocess_with_geometry(photo.image, 32)
    with torch.inference_mode():
        top2 = model(x)[0].topk(2).indices.tolist()
    assert [t["class_id"] for t in entry["targets"]] == top2
    assert [p["class_id"] for p in out.doc["predictions"][:2]] == top2
    assert [t["label"] for t in entry["targets"]] == [CLASSES[i] for i in top2]
    # box and .npy map: exactly what Explanation.boxes and geometry.original_maps give at the photo's size
    import camlens

    exp = camlens.explain(model, x, "gradcam", targets=[top2])
    boxes = exp.boxes(0.2, size=(40, 48))[0]
    for k, target in enumerate(entry["targets"]):
        assert target["box"] == (None if boxes[k] is None else list(boxes[k]))
        saved = np.load(io.BytesIO(out.files[target["files"]["map"]][0]))
        expected = geometry.original_maps(exp.raw[0, k], (40, 48)).float().numpy()
        assert saved.shape == (40, 48) and saved.dtype == np.float32
        np.testing.assert_allclose(saved, expected, atol=1e-6)
        assert Image.open(io.BytesIO(out.files[target["files"]["overlay"]][0])).size == (48, 40)
    # a new threshold redraws from the cached explanation: not one forward
    before = model.forwards
    again = ws.explain({**ask, "threshold": 0.9})
    assert model.forwards == before and again.doc["methods"][0]["cached"]
    # another method: its own forward only (the photo's input and predictions are reused)
    ws.explain({**ask, "methods": ["gradcam++"]})
    assert model.forwards == before + 1


def test_engine_refuses_bad_requests_with_a_message() -> None:
    ws = Workspace({"tiny": _bundle()}, Limits(max_upload_bytes=10_000, max_pixels=5_000))
    with pytest.raises(RequestError, match=r"notes\.txt: not an image of an accepted format"):
        ws.add_upload(b"just some text\n", "notes.txt")
    with pytest.raises(RequestError, match=r"bomb\.png: 3,600,000,000 pixels is over the budget of 5,000"):
        ws.add_upload(_claimed_png(60000, 60000), "bomb.png")
    with pytest.raises(RequestError, match="the limit is 10,000"):
        ws.add_upload(b"x" * 10_001, "big.png")
    photo_id, _ = ws.add_upload(_png_bytes(), "ok.png")
    good = {"photo": photo_id, "model": "tiny", "methods": ["gradcam"]}
    for change, message in [
        ({"classes": ["durian"]}, "unknown class name 'durian'"),
        ({"classes": [7]}, "class id 7 is out of range"),
        ({"methods": ["gradkam"]}, "unknown method 'gradkam'"),
        ({"methods": []}, "choose at least one method"),
        ({"threshold": 0}, r"threshold must be a number in \(0, 1\]"),
        ({"topk": 11}, r"top-k must be 1 \.\. 10"),
        ({"model": "other"}, "unknown model 'other'"),
        ({"layer": "features.9"}, "layer 'features.9' not found"),
        ({"photo": "p99"}, "no longer on the server"),
    ]:
        with pytest.raises(RequestError, match=message):
            ws.explain({**good, **change})
    assert ws.explain({**good, "classes": ["banana", "4"]}).doc["methods"][0]["targets"][1]["label"] == "elderberry"


def test_cancel_stops_between_chunks_and_the_model_is_handed_back() -> None:
    model = Gated()
    model.features[0].weight.requires_grad_(False)  # a flag the call must not flip back or forth
    ws = Workspace({"tiny": _bundle(model)})
    photo_id, _ = ws.add_upload(_png_bytes(), "p.png")
    seen: list[tuple[int, int, str]] = []

    def stop(done: int, total: int, desc: str) -> None:
        seen.append((done, total, desc))
        if done > 0:
            raise Cancelled

    with observe(stop), pytest.raises(Cancelled):
        ws.explain({"photo": photo_id, "model": "tiny", "methods": ["scorecam"]})
    assert seen[0][0] == 0 and seen[-1][0] > 0 and len(seen) == 2  # stopped after the first chunk
    assert _hooks(model) == 0 and not model.training
    assert not model.features[0].weight.requires_grad and model.features[2].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_long_methods_report_to_the_page_not_to_the_server_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    ws = Workspace({"tiny": _bundle()})
    photo_id, _ = ws.add_upload(_png_bytes(), "p.png")
    seen: list[tuple[int, int, str]] = []
    with observe(lambda done, total, desc: seen.append((done, total, desc))):
        ws.explain({"photo": photo_id, "model": "tiny", "methods": ["rise"]})  # 4000 masks: tqdm's bar would show
    assert seen and seen[-1][0] == seen[-1][1] == 4000  # the page's progress: every row reported
    assert "row/s" not in capfd.readouterr().err  # no tqdm bar on the server's terminal


# ------------------------------------------------------------------------------------------------ HTTP


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            kind = response.getheader("Content-Type", "")
            return response.status, json.loads(data) if kind == "application/json" else data
        finally:
            conn.close()

    def job(self, doc: dict[str, Any]) -> tuple[int, Any]:
        return self.request("POST", "/api/jobs", json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def wait(self, job_id: str, states: tuple[str, ...] = ("done", "error", "cancelled")) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, doc = self.request("GET", f"/api/jobs/{job_id}")
            assert status == 200
            if doc["state"] in states:
                return doc
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} still {doc['state']}")


@pytest.fixture
def served() -> Iterator[tuple[Client, App, Gated]]:
    model = Gated()
    app = App(Workspace({"tiny": _bundle(model)}, Limits(max_upload_bytes=50_000, max_pixels=20_000)), queue=1)
    server = app.server("127.0.0.1", 0, connections=4, timeout=1.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Client(server.server_address[1]), app, model
    finally:
        model.gate.set()
        server.shutdown()
        server.server_close()
        app.close()


def test_http_explain_downloads_and_hostile_requests(served: tuple[Client, App, Gated]) -> None:
    client, _, _ = served
    status, page = client.request("GET", "/")
    assert status == 200 and b"/static/app.js" in page
    status, config = client.request("GET", "/api/config")
    assert status == 200 and config["models"] == ["tiny"] and "gradcam" in [m["name"] for m in config["methods"]]
    status, info = client.request("GET", "/api/models/tiny")
    assert info["classes"] == CLASSES and [r["name"] for r in info["layers"] if r["default"]] == ["features"]
    status, photo = client.request("POST", "/api/photos", _png_bytes(), {"X-Filename": "leaf.png"})
    assert status == 200 and photo["size"] == [48, 40]
    status, job = client.job({"photo": photo["id"], "model": "tiny", "methods": ["gradcam", "saliency"], "topk": 1})
    assert status == 202
    done = client.wait(job["id"])
    assert done["state"] == "done", done
    saliency = done["result"]["methods"][1]["targets"][0]["files"]
    status, picture = client.request("GET", done["result"]["files_url"] + saliency["pixels"])
    assert status == 200 and Image.open(io.BytesIO(picture)).size == (48, 40)
    status, document = client.request("GET", done["result"]["files_url"] + "result.json")
    assert status == 200 and document["methods"][0]["method"] == "gradcam"
    # hostile requests: each one answered with a message, none of them stops the server
    text = client.request("POST", "/api/photos", b"hello, not a picture", {"X-Filename": "a.txt"})
    assert text == (400, {"error": "a.txt: not an image of an accepted format (PNG, JPEG, GIF, BMP, TIFF, WEBP, PPM)"})
    status, bomb = client.request("POST", "/api/photos", _claimed_png(60000, 60000), {"X-Filename": "bomb.png"})
    assert status == 400 and "over the budget of 20,000" in bomb["error"]
    assert client.request("POST", "/api/jobs", b"{not json")[0] == 400
    assert client.request("GET", "/api/jobs/j999")[0] == 400
    assert client.request("GET", "/static/../../engine.py")[0] == 404
    assert client.request("GET", "/api/models/other") == (400, {"error": "unknown model 'other'; the app serves tiny"})
    assert client.request("GET", "/", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    status, job = client.job({"photo": photo["id"], "model": "tiny", "methods": ["gradcam"], "classes": ["durian"]})
    assert client.wait(job["id"])["error"] == "unknown class name 'durian'"
    assert client.request("GET", "/api/config")[0] == 200


def test_the_page_names_no_other_origin_and_the_policy_forbids_one(served: tuple[Client, App, Gated]) -> None:
    import re
    from importlib import resources

    client, _, _ = served
    static = resources.files("camlens.app").joinpath("static")
    names = sorted(f.name for f in static.iterdir())
    assert names == ["app.css", "app.js", "index.html"]
    for name in names:
        text = static.joinpath(name).read_text()
        # the only absolute URL is SVG's XML namespace, an identifier that is never fetched
        assert set(re.findall(r"[a-z]+://[^\s\"'`)]+", text)) <= {"http://www.w3.org/2000/svg"}, name
        assert "@import" not in text and "//cdn" not in text
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    conn.request("GET", "/")
    policy = conn.getresponse().getheader("Content-Security-Policy", "")
    conn.close()
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy


def test_http_body_over_the_limit_is_refused_unread(served: tuple[Client, App, Gated]) -> None:
    client, _, _ = served
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    conn.putrequest("POST", "/api/photos")
    conn.putheader("Content-Length", str(10**12))  # a terabyte announced, nothing sent
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and b"1,000,000,000,000 bytes; the limit is 50,000" in response.read()
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    conn.putrequest("POST", "/api/photos")
    conn.endheaders()
    assert conn.getresponse().status == 411
    conn.close()


def test_silent_clients_hold_no_thread_for_long(served: tuple[Client, App, Gated]) -> None:
    import socket

    client, _, _ = served
    # as many silent connections as handler threads, and as many again waiting (a slowloris)
    silent = [socket.create_connection(("127.0.0.1", client.port)) for _ in range(8)]
    try:
        started = time.monotonic()
        status, _ = client.request("GET", "/api/config")
        waited = time.monotonic() - started
        assert status == 200
        # four threads held by the first four silent clients for the 1 s timeout (counted from their connect,
        # before `started`), then by the next four:
        # about 2 s, bounded by the timeout, never the silent clients' lifetime
        assert 0.5 <= waited < 8, waited
    finally:
        for s in silent:
            s.close()


def test_http_queue_is_bounded_and_a_job_can_be_cancelled(served: tuple[Client, App, Gated]) -> None:
    client, app, model = served
    _, photo = client.request("POST", "/api/photos", _png_bytes(), {"X-Filename": "leaf.png"})
    model.gate.clear()  # Score-CAM's chunks of masked copies wait here
    ask = {"photo": photo["id"], "model": "tiny", "methods": ["scorecam"]}
    _, first = client.job(ask)
    # the first job reaches its first chunk (progress 0 of N) and is held there
    deadline = time.monotonic() + 30
    while not client.request("GET", f"/api/jobs/{first['id']}")[1]["progress"] and time.monotonic() < deadline:
        time.sleep(0.02)
    status, second = client.job(ask)  # one worker busy, one place in the queue
    assert status == 202 and second["state"] == "queued"
    status, third = client.job(ask)
    assert status == 503 and "busy" in third["error"]
    assert client.request("POST", f"/api/jobs/{first['id']}/cancel", b"")[0] == 200
    assert client.request("POST", f"/api/jobs/{second['id']}/cancel", b"")[0] == 200
    model.gate.set()
    assert client.wait(first["id"])["state"] == "cancelled"
    assert client.wait(second["id"])["state"] == "cancelled"
    assert _hooks(model) == 0 and not model.training
    # the server goes on: the same request, not cancelled, finishes
    _, fourth = client.job(ask)
    assert client.wait(fourth["id"])["state"] == "done"
    assert app.workspace.bundle("tiny").model is model


# ------------------------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser_page() -> Iterator[tuple[Any, str]]:
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("skimage")
    app = App(Workspace({"efficientnet_lite0": "efficientnet_lite0"}))
    server = app.server("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            yield page, url
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
        app.close()


# (the page's Content-Security-Policy forbids eval, so waits are selectors, not wait_for_function strings)
_SETTLED = "body[data-state=done], body[data-state=error], body[data-state=cancelled]"


def _expect_change(page: Any) -> None:
    """Mark the page as waiting before an action, so the next wait sees that action's outcome."""
    page.evaluate("() => { document.body.dataset.state = 'waiting'; }")


def _settled(page: Any) -> str:
    page.wait_for_selector(_SETTLED, state="attached", timeout=120_000)
    return str(page.get_attribute("body", "data-state"))


def _overlay_pixels(page: Any, url: str) -> bytes:
    src = page.get_attribute("#results img.overlay", "src")
    return bytes(page.request.get(url.rstrip("/") + src).body())


def test_page_upload_select_images_load_and_bad_uploads(browser_page: tuple[Any, str], tmp_path: Path) -> None:
    from skimage import data

    page, url = browser_page
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]", state="attached", timeout=120_000)
    # the layer menu is `camlens layers`, default marked
    assert "_swish@1 1280x7x7 (default)" in page.inner_text("#layer")
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")
    _expect_change(page)
    page.set_input_files("#file", str(tmp_path / "cat.png"))
    assert _settled(page) == "done"
    assert page.inner_text("#photo-name") == "cat.png (451 x 300)"
    widths = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(widths) == 2 and all(w > 0 for w in widths)  # overlay and signed raw map of gradcam
    assert "Egyptian cat" in page.inner_text("#predictions")
    gradcam = _overlay_pixels(page, url)
    # changing the method changes the picture
    _expect_change(page)
    page.uncheck("input[name=method][value=gradcam]")
    page.check("input[name=method][value=eigencam]")
    page.wait_for_selector(".method-result[data-method=eigencam]", timeout=120_000)
    assert _settled(page) == "done"
    eigencam = _overlay_pixels(page, url)
    before, after = (np.asarray(Image.open(io.BytesIO(png)), dtype=int) for png in (gradcam, eigencam))
    assert np.abs(after - before).mean() > 1
    # a text file, then a huge image header: one message each, and the page keeps working
    (tmp_path / "notes.txt").write_text("not a picture")
    page.set_input_files("#file", str(tmp_path / "notes.txt"))
    page.wait_for_selector("#message:has-text('notes.txt')")
    assert "notes.txt: not an image of an accepted format" in page.inner_text("#message")
    (tmp_path / "bomb.png").write_bytes(_claimed_png(60000, 60000))
    page.set_input_files("#file", str(tmp_path / "bomb.png"))
    page.wait_for_selector("#message:has-text('bomb.png')")
    assert "over the budget" in page.inner_text("#message")
    _expect_change(page)
    page.select_option("#demo", "coffee")
    assert _settled(page) == "done" and page.inner_text("#message") == ""
    assert page.inner_text("#photo-name").startswith("coffee")
    # class-name completion after the first name: the suggestions keep what is typed before the ";"
    page.fill("#classes", "tabby; egyptian")
    offered = page.eval_on_selector_all("#class-names option", "os => os.map(o => o.value)")
    assert offered == ["tabby; Egyptian cat"]
    page.fill("#classes", "Egyptian")
    offered = page.eval_on_selector_all("#class-names option", "os => os.map(o => o.value)")
    assert offered == ["Egyptian cat"]


# ------------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
        (["--max-upload-mb", "0"], "--max-upload-mb must be > 0, got 0"),
        (["--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--weights", "w.pth"], "--weights and --model-arg apply to one --model"),
    ],
)
def test_app_command_bad_flags_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from camlens.cli import main

    assert main(["app", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_app_command_serves_its_models_on_localhost() -> None:
    import os
    import subprocess
    import sys

    code = "import sys; from camlens.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "app", "--port", "0", "--model", "tests.nets:GapNet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("camlens app: http://127.0.0.1:"), line + (
            process.stderr.read() if process.stderr else ""
        )
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        status, config = Client(port).request("GET", "/api/config")
        # the model given first, then the built-in models whose weights are installed
        assert status == 200 and config["models"][0] == "tests.nets:GapNet"
        assert Client(port).request("GET", "/api/models/tests.nets%3AGapNet")[1]["size"] == 224
    finally:
        process.terminate()
        process.wait(timeout=30)
