"""camlens.evaluate and `camlens evaluate`: a tiny end-to-end run whose table is worked out by hand.

The model reads the red channel: features = identity on the (3, 32, 32) input, global average pooling,
and a linear layer W = [[1, 0, 0], [0, 0, 0]], b = [0, 0.1]. So

    score_0 = mean of the red channel,  score_1 = 0.1,
    CAM of class 0 = the red channel itself,  CAM of class 1 = 0 everywhere (no box).

Images (inputs are not normalised: mean 0, std 1, pixel values 0 or 1):

    a: red square [4, 6, 20, 22) (16x16 = 256 px, mean 0.25 > 0.1), label 0, box = the square -> correct
    b: red square [10, 2, 26, 18) , label 0, box = the square                              -> correct
    c: red square [8, 8, 24, 24), label 1: predicted 0 (0.25 > 0.1) -> top-1 cls wrong; class 1 is
       in the top-2, so top-K (K = 5 -> 2 classes) classification is right, but class 1's map is
       all zero -> no box -> top-5 localisation wrong.

Hence: top-1 cls err 1/3, top-5 cls err 0, top-1 loc err 1/3, top-5 loc err 1/3, GT-known 2/3.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens import zoo
from camlens.cli import main
from camlens.evaluate import Evaluation, demo_dataset, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

SQUARES = {"a": ((4, 6, 20, 22), 0), "b": ((10, 2, 26, 18), 0), "c": ((8, 8, 24, 24), 1)}


class RedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 0, 0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def squares(folder: Path, extra: Sequence[str] = ()) -> Path:
    """The squares a, b, c as 32x32 PNGs (a red square on black), plus the ``extra`` CSV rows; returns the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,class,x0,y0,x1,y1"]
    for name, ((x0, y0, x1, y1), label) in SQUARES.items():
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[y0:y1, x0:x1, 0] = 255
        Image.fromarray(pixels).save(folder / f"{name}.png")
        lines.append(f"{name}.png,{label},{x0},{y0},{x1},{y1}")
    (folder / "boxes.csv").write_text("\n".join([*lines, *extra]) + "\n")
    return folder / "boxes.csv"


@pytest.fixture
def bundle() -> zoo.ModelBundle:
    return zoo.ModelBundle(RedNet().eval(), "rednet", size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_localization_table_by_hand(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    csv = squares(tmp_path)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    # two DataLoader workers: the images arrive out of the main process, in order
    result = evaluate(bundle, csv, "cam,gradcam", out=tmp_path / "out", batch_size=2, workers=2, progress=False)
    assert isinstance(result, Evaluation) and result.images == 3
    assert result.topk == 2  # K = 5 asked, the model has 2 classes
    for method in ("cam", "gradcam"):
        row = result.rows[method]
        assert row["top1_cls_err"] == pytest.approx(100 / 3)
        assert row["topk_cls_err"] == pytest.approx(0.0)
        assert row["top1_loc_err"] == pytest.approx(100 / 3)
        assert row["topk_loc_err"] == pytest.approx(100 / 3)
        assert row["gt_known_loc_acc"] == pytest.approx(200 / 3)
    # the model is handed back as it came
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())
    assert not bundle.model.training
    assert all(not m._forward_hooks for m in bundle.model.modules())
    out = tmp_path / "out"
    for name in ("examples.png", "examples/cam.png"):
        assert (out / name).is_file(), name
    # results.json holds the numbers above (rounded only by JSON's float repr)
    saved = json.loads((out / "results.json").read_text())
    assert saved["images"] == 3 and saved["topk"] == 2
    assert saved["rows"]["gradcam"]["top1_loc_err"] == pytest.approx(100 / 3)
    assert saved["rows"]["cam"]["gt_known_loc_acc"] == pytest.approx(200 / 3)
    assert (out / "table.csv").read_text().splitlines()[0].startswith("method,top1_cls_err,topk_cls_err")
    table = (out / "table.md").read_text()
    assert "| cam |" in table and "top-2 loc err %" in table


def test_faithfulness_and_pointing_columns(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    csv = squares(tmp_path)
    result = evaluate(
        bundle,
        csv,
        ["cam"],
        metrics="pointing,deletion,insertion,ad,ic",
        out=tmp_path / "out",
        steps=4,
        progress=False,
    )
    row = result.rows["cam"]
    # CAM of the label's class peaks inside the box for a and b (hits); c's map (class 1) is all zero, so
    # every pixel is a maximum and ties="first" takes pixel (0, 0), 8 sqrt(2) = 11.3 px from the box's
    # corner pixel (8, 8): within the 15 px tolerance, a hit as well -> 3/3
    assert row["pointing_acc"] == 100.0
    # the red channel ordered first: deleting it first kills class 0's score; inserting it first restores it
    assert row["deletion_auc"] < row["insertion_auc"]
    # every image is predicted class 0, whose CAM is the red channel: 1 on the square, 0 elsewhere, so
    # Explanation.maps (min-max) is the red channel itself and E = maps * I = I exactly: O = Y, no drop,
    # no increase
    assert row["average_drop"] == 0.0 and row["increase_in_confidence"] == 0.0
    assert (tmp_path / "out" / "curves.png").is_file()


def test_unknown_metric_and_method(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    csv = squares(tmp_path)
    with pytest.raises(ValueError, match=r"unknown metric 'delition'.*deletion"):
        evaluate(bundle, csv, "cam", metrics="delition", progress=False)
    with pytest.raises(ValueError, match="unknown method 'gradcum'"):
        evaluate(bundle, csv, "gradcum", progress=False)


def test_cli_evaluate_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = squares(tmp_path)
    torch.save(RedNet().eval(), tmp_path / "rednet.pt")
    code = main(
        [
            "evaluate",
            str(csv),
            "--model",
            str(tmp_path / "rednet.pt"),
            "--method",
            "gradcam",
            "--out",
            str(tmp_path / "o"),
            "--trust-model-file",  # a pickled nn.Module, written by this test
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "| gradcam |" in out.out and "top-1 loc err" in out.out
    assert (tmp_path / "o" / "table.md").is_file()


def test_cli_evaluate_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert "missing.csv" in err and "Traceback" not in err
    assert main(["evaluate"]) == 2
    assert "DATASET" in capsys.readouterr().err


def test_demo_dataset_boxes_fit_the_photos(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    from camlens.datasets import read_csv

    data = read_csv(demo_dataset(tmp_path))
    assert len(data) == 4
    for sample in data:
        with Image.open(sample.path) as image:
            w, h = image.size
        (x0, y0, x1, y1) = sample.boxes[0]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_sanity_column_and_plot(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    csv = squares(tmp_path)
    result = evaluate(bundle, csv, "gradcam", metrics="sanity", out=tmp_path / "out", progress=False)
    row = result.rows["gradcam"]
    # cascading randomisation re-initialises the only layer, fc (seeded by its name), which gives the red
    # channel the weight -0.0516 for class 0: Grad-CAM's map is ReLU(-0.0516 / 1024 * red) = 0, a blank
    # map, whose Spearman with the original is 0 -> the check passes (0 < 0.5)
    assert row["sanity_spearman"] == 0.0 and row["sanity"] is True
    assert (tmp_path / "out" / "sanity_gradcam.png").is_file()
    assert "sanity check" in result.markdown()


def test_mask_only_data_set_gives_pxap(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    """wsolevaluation's OpenImages format: masks, no boxes. CAM of class 0 is the red channel, which is
    exactly the mask (the red square), so every threshold separates foreground from background: PxAP 100."""
    meta, images = tmp_path / "meta", tmp_path / "images"
    meta.mkdir()
    images.mkdir()
    ids, labels, masks = [], [], []
    for name, ((x0, y0, x1, y1), _) in list(SQUARES.items())[:2]:
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[y0:y1, x0:x1, 0] = 255
        Image.fromarray(pixels).save(images / f"{name}.png")
        Image.fromarray(pixels[:, :, 0]).save(images / f"{name}_mask.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(images / f"{name}_ignore.png")
        ids.append(f"{name}.png")
        labels.append(f"{name}.png,0")
        masks.append(f"{name}.png,{name}_mask.png,{name}_ignore.png")
    (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta / "class_labels.txt").write_text("\n".join(labels) + "\n")
    (meta / "localization.txt").write_text("\n".join(masks) + "\n")
    from camlens.datasets import read_wsol_metadata

    result = evaluate(bundle, read_wsol_metadata(meta, images), "cam", progress=False)
    assert result.rows["cam"]["pxap"] == pytest.approx(100.0)
    assert "top1_loc_err" not in result.rows["cam"]  # no box: no box metric
