"""`camlens gapify` (CAM paper sec. 3) from the shell, and its checkpoint loaded back by `explain`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camlens import zoo
from camlens.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _image_folder(root: Path) -> Path:
    """Two classes of 8x8 images: a bright left half ("left") or right half ("right")."""
    rng = np.random.default_rng(0)
    for name, cols in (("left", slice(0, 4)), ("right", slice(4, 8))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 40, (8, 8, 3), dtype=np.uint8)
            pixels[:, cols] = 220
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_gapify_then_explain_with_cam(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _image_folder(tmp_path / "train")
    ckpt = tmp_path / "gap.pt"
    args = ["gapify", "--model", "tests.nets:FcNet", "--data", str(data), "--image-size", "8"]
    args += ["--channels", "8", "--epochs", "2", "--batch-size", "4", "--lr", "0.05", "--out", str(ckpt)]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "epoch 1:" in out and "epoch 2:" in out
    assert ckpt.is_file()

    # a factory model has no torchvision source: the checkpoint embeds the pickled module, so it needs trust
    image = str(data / "left" / "0.png")
    assert main(["explain", image, "--model", str(ckpt), "--method", "cam", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "embeds a pickled module" in err and "--trust-model-file" in err

    bundle = zoo.load_model(str(ckpt), trust=True)  # the checkpoint is a model spec like any file
    assert bundle.size == 8 and bundle.classes == ["left", "right"]
    with torch.no_grad():
        assert bundle.model(torch.zeros(1, 3, 8, 8)).shape == (1, 2)

    trusted = ["--model", str(ckpt), "--method", "cam", "--trust-model-file"]
    code = main(["explain", image, *trusted, "--out", str(tmp_path / "explained")])
    code_json = main(["explain", image, *trusted, "--json", "--out", str(tmp_path / "explained-json")])
    captured = capsys.readouterr()
    assert code == 0 and code_json == 0, captured.err
    record = json.loads(captured.out[captured.out.index("{") :])
    assert record["images"][0]["explanations"][0]["label"] in ("left", "right")


def test_gapify_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gapify", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "folder" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    assert main(["gapify", "--model", "tests.nets:FcNet", "--data", str(tmp_path / "empty")]) == 2
    assert "class folders" in capsys.readouterr().err


def _gapify(data: Path, out: Path, *extra: str) -> list[str]:
    args = ["gapify", "--model", "tests.nets:FcNet", "--data", str(data), "--image-size", "8", "--channels", "4"]
    return [*args, "--epochs", "1", "--batch-size", "4", "--out", str(out), *extra]


def test_gapify_lr_nan_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _image_folder(tmp_path / "train")
    assert main(_gapify(data, tmp_path / "gap.pt", "--lr", "nan")) == 2
    err = capsys.readouterr().err
    # one line naming the flag and the value (the CLI's own range check or finetune's, whichever comes first)
    assert err.startswith("camlens: ") and err.count("\n") == 1 and "lr" in err and "nan" in err
    assert not (tmp_path / "gap.pt").exists()


def test_gapify_corrupt_image_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _image_folder(tmp_path / "train")
    (data / "right" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    assert main(_gapify(data, tmp_path / "gap.pt")) == 2
    err = capsys.readouterr().err
    assert err == f"camlens: {data / 'right' / 'broken.jpg'}: not an image file PIL can read\n"
    assert not (tmp_path / "gap.pt").exists()


def test_bench_needs_a_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "camlens bench wsol" in capsys.readouterr().err


def test_gapify_with_local_weights_needs_no_trust(tmp_path: Path) -> None:
    """A torchvision model with --weights is rebuilt from its name: the checkpoint is weights only."""
    import torchvision
    from PIL import Image

    from camlens import gap, zoo
    from camlens.cli import main

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), (60 * i, 100, 200 if cls == "a" else 20)).save(
                tmp_path / "data" / cls / f"{i}.png"
            )
    ckpt = tmp_path / "gap.pt"
    argv = ["gapify", "--model", "torchvision:resnet18", "--weights", str(tmp_path / "r18.pth"), "--data"]
    assert (
        main(
            [
                *argv,
                str(tmp_path / "data"),
                "--epochs",
                "1",
                "--channels",
                "8",
                "--image-size",
                "64",
                "--out",
                str(ckpt),
            ]
        )
        == 0
    )
    assert not gap.checkpoint_needs_trust(ckpt)
    bundle = zoo.load_model(str(ckpt))  # no trust=True
    assert bundle.classes == ["a", "b"]
