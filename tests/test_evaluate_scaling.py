"""`camlens evaluate` at scale: resumed after kill -9, shared over torchrun processes, on a GPU.

Every comparison is with an uninterrupted single-process run of the same command: the same table (all columns
but the time per image, which is a measurement) and the same per-image records in the same order, so each
image was evaluated exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.cli import main
from tests.test_evaluate import RedNet

ROOT = Path(__file__).resolve().parents[1]
SLOW = 0.15  # seconds per forward of SlowRedNet: long enough to kill a run between two batches


class SlowRedNet(RedNet):
    """test_evaluate's RedNet (its CAM is the red channel), slowed down so a run can be killed mid-way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLOW)
        return super().forward(x)


def rednet() -> RedNet:
    return RedNet().eval()


def slow_rednet() -> SlowRedNet:
    return SlowRedNet().eval()


def squares(folder: Path, n: int, seed: int = 0, broken: int | None = None) -> Path:
    """``n`` images of 20-60 px with one red rectangle each (its box), label 0 or 1; image ``broken`` truncated."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,class,x0,y0,x1,y1"]
    for i in range(n):
        width, height = (int(v) for v in rng.integers(20, 61, 2))
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = int(rng.integers(x0 + 2, width + 1)), int(rng.integers(y0 + 2, height + 1))
        pixels = (rng.random((height, width, 3)) * 60).astype(np.uint8)
        pixels[y0:y1, x0:x1, 0] = 255
        Image.fromarray(pixels).save(folder / f"s{i:02d}.png")
        if i == broken:
            data = (folder / f"s{i:02d}.png").read_bytes()
            (folder / f"s{i:02d}.png").write_bytes(data[: len(data) // 2])
        lines.append(f"s{i:02d}.png,{int(rng.integers(0, 2))},{x0},{y0},{x1},{y1}")
    (folder / "boxes.csv").write_text("\n".join(lines) + "\n")
    return folder / "boxes.csv"


def env() -> dict[str, str]:
    # the worktree's camlens and this test module (for --model tests.test_evaluate_scaling:...) importable
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def camlens(*args: str, torchrun: int = 0) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"]
    command = [*launcher, "-m", "camlens", "evaluate", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=300)


def table(out: Path) -> dict[str, Any]:
    """results.json without the times (measurements), the files written, and the folder's own name."""
    doc = json.loads((out / "results.json").read_text().replace(json.dumps(str(out))[1:-1], "OUT"))
    for row in doc["rows"].values():
        row.pop("seconds_per_image")
    return {k: v for k, v in doc.items() if k not in ("seconds", "files")}


def test_killed_run_resumes_to_the_same_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = squares(tmp_path / "data", 12, broken=5)
    model = ["--model", "tests.test_evaluate_scaling:slow_rednet", "--batch-size", "2", "--workers", "0"]
    args = ["evaluate", str(csv), *model, "--method", "gradcam,cam", "--metrics", "localization,pointing"]
    killed = tmp_path / "killed"
    run = subprocess.Popen(
        [sys.executable, "-m", "camlens", *args, "--out", str(killed)],
        env=env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (killed / "progress" / "batch-000001.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    done = sorted(p.name for p in (killed / "progress").glob("batch-*.json"))
    assert 2 <= len(done) < 6 and not (killed / "table.csv").exists(), done  # killed mid-run, 6 batches in all
    # the rest in this process: the same code as the command, without a Python start-up per run
    assert main([*args, "--out", str(killed)]) == 2  # 2: the broken image is skipped, as in the whole run
    resumed = capsys.readouterr()
    assert f"{2 * len(done)} images done before, skipping them ({12 - 2 * len(done)} to go)" in resumed.err
    assert main([*args, "--out", str(tmp_path / "whole")]) == 2
    whole = capsys.readouterr()
    assert "resuming" not in whole.err
    assert table(killed) == table(tmp_path / "whole")
    assert resumed.out.split("| s / image")[0] == whole.out.split("| s / image")[0].replace("whole", "killed")
    # a finished run in the same folder: nothing to redo, the same table
    assert main([*args, "--out", str(killed)]) == 2
    assert "12 images done before, skipping them (0 to go)" in capsys.readouterr().err
    assert table(killed) == table(tmp_path / "whole")
    # another method set, data set or model in the same folder: refused in one line, nothing changed
    before = (killed / "results.json").read_text()
    for changed, what in (
        (["--method", "cam"], "methods"),
        (["--limit", "4"], "data set"),
        (["--model", "tests.test_evaluate_scaling:rednet"], "model"),
    ):
        assert main([*args, *changed, "--out", str(killed)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"another {what}" in lines[0], lines
    assert (killed / "results.json").read_text() == before


def test_damaged_records_are_done_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from camlens import zoo
    from camlens.evaluate import evaluate

    csv = squares(tmp_path / "data", 6)
    bundle = zoo.ModelBundle(rednet(), "rednet", size=32)
    run = {"methods": "gradcam", "batch_size": 2, "workers": 0, "progress": False, "examples": 0}
    want = evaluate(bundle, csv, **run, out=tmp_path / "whole").rows["gradcam"]
    out = tmp_path / "damaged"
    evaluate(bundle, csv, **run, out=out)
    (out / "progress" / "batch-000001.json").write_text('{"batch": 1, "index": [99]}')  # not this batch's
    (out / "progress" / "batch-000002.json").write_text("{not json")
    (out / "progress" / ".batch-000000.json.123.tmp").write_text('{"batch": 0')  # a write cut by a kill
    capsys.readouterr()
    got = evaluate(bundle, csv, **run, out=out).rows["gradcam"]
    err = capsys.readouterr().err
    assert "2 images done before, skipping them (4 to go)" in err
    assert err.count("is not a record of this run; doing that batch again") == 2
    assert {k: v for k, v in got.items() if k != "seconds_per_image"} == {
        k: v for k, v in want.items() if k != "seconds_per_image"
    }
    assert not list((out / "progress").glob("*.tmp"))


def test_without_resume_a_folder_is_rewritten(tmp_path: Path) -> None:
    # resume=False (camlens bench wsol: a freshly trained net each time): no records, no refusal
    from camlens import zoo
    from camlens.evaluate import evaluate

    csv = squares(tmp_path / "data", 3)
    bundle = zoo.ModelBundle(rednet(), "rednet", size=32)
    for methods in ("gradcam", "cam"):
        result = evaluate(bundle, csv, methods, progress=False, examples=0, out=tmp_path / "o", resume=False)
        assert result.methods == [methods]
    assert not (tmp_path / "o" / "progress").exists()
    assert "| cam |" in (tmp_path / "o" / "table.md").read_text()


def test_torchrun_two_processes_equal_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a generated set (with an unreadable image) in batches of 3, so each rank does two and the last is short,
    # and the held-in demo set on the built-in EfficientNet-Lite0
    csv = squares(tmp_path / "data", 11, seed=1, broken=4)
    common = ["--model", "tests.test_evaluate_scaling:rednet", "--batch-size", "3", "--method", "gradcam,cam"]
    for name, args in (("squares", [str(csv), *common]), ("demo", ["--demo", "--batch-size", "2"])):
        one, two = tmp_path / f"{name}1", tmp_path / f"{name}2"
        shared = camlens(*args, "--workers", "0", "--out", str(two), torchrun=2)
        # rank 0 exits 2 when an image was skipped, which torchrun reports as a failure (after the table is written)
        assert shared.returncode == (0 if name == "demo" else 1), shared.stderr[-3000:]
        assert main(["evaluate", *args, "--workers", "0", "--out", str(one)]) == (0 if name == "demo" else 2)
        capsys.readouterr()
        keys = [r["key"] for r in table(two)["per_image"]["gradcam"]]
        assert len(keys) == len(set(keys)) == table(two)["images"]  # each image exactly once
        assert table(one) == table(two)
        assert sorted(p.name for p in (two / "progress").glob("batch-*")) == sorted(
            p.name for p in (one / "progress").glob("batch-*")
        )
    assert table(tmp_path / "squares1")["images"] == 10 and len(table(tmp_path / "squares1")["skipped"]) == 1


def test_bad_device_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for device, message in (("gpu", "not a device"), ("cuda:99", "CUDA device"), ("tpu", "not a device")):
        assert main(["evaluate", "--demo", "--device", device]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@requires_gpu
def test_evaluate_on_cuda_equals_cpu_classification(tmp_path: Path) -> None:
    from camlens import zoo
    from camlens.evaluate import demo_dataset, evaluate

    csv = demo_dataset(tmp_path / "demo")
    cpu = evaluate(zoo.load_model(), csv, "cam,gradcam", progress=False)
    gpu = evaluate(zoo.load_model(), csv, "cam,gradcam", device="cuda", progress=False, out=tmp_path / "gpu")
    for method in ("cam", "gradcam"):
        for column in ("top1_cls_err", "topk_cls_err"):
            assert gpu.rows[method][column] == cpu.rows[method][column]
        assert abs(gpu.rows[method]["maxboxacc"] - cpu.rows[method]["maxboxacc"]) <= 25.0  # one image of four
    assert (tmp_path / "gpu" / "table.md").is_file()


@pytest.mark.gpu
@requires_gpu
def test_cli_evaluate_cuda_end_to_end(tmp_path: Path) -> None:
    done = camlens("--demo", "--device", "cuda", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    assert "| gradcam |" in done.stdout
