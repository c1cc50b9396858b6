"""The digits WSOL benchmark (camlens.bench): exact data, files evaluate reads, evaluate as its one loop, tables."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from camlens import evaluate as evaluate_module
from camlens.bench import nets, tables, wsol_digits
from camlens.evaluate import Evaluation

pytestmark = pytest.mark.usefixtures("one_thread")


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = wsol_digits.make_dataset(30, seed=3)
    b = wsol_digits.make_dataset(30, seed=3)
    c = wsol_digits.make_dataset(30, seed=4)
    for name in ("images", "labels", "boxes", "masks", "sources"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (30, 1, 48, 48) and a.images.dtype == torch.float32
    # 8-bit values: k / 255 exactly, so a PNG holds the training pixels
    assert torch.equal(torch.round(a.images * 255).div_(255.0), a.images)


def test_boxes_enclose_exactly_the_digit_and_clutter_stays_outside() -> None:
    data = wsol_digits.make_dataset(60, seed=0, clutter=4)
    ink = data.images[:, 0] > 0
    clutter_seen = 0
    for i in range(len(data)):
        mask = data.masks[i]
        rows = torch.nonzero(mask.any(1)).flatten()
        cols = torch.nonzero(mask.any(0)).flatten()
        # END-EXCLUSIVE box of the mask's pixels
        assert data.boxes[i].tolist() == [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        assert bool((mask <= ink[i]).all())  # the mask is ink
        x0, y0, x1, y1 = data.boxes[i].tolist()
        # inside the box grown by one pixel, every inked pixel is the digit's: clutter stays outside
        grown = torch.zeros_like(mask)
        grown[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = True
        assert torch.equal(ink[i] & grown, mask)
        clutter_seen += int((ink[i] & ~grown).sum()) > 0
        assert 12 <= y1 - y0 <= 26  # the digit's height range
    assert clutter_seen >= 55  # fragments are really there (a few may find no room)


def test_without_clutter_the_box_is_the_bounding_box_of_all_ink() -> None:
    data = wsol_digits.make_dataset(10, seed=1, clutter=0)
    assert torch.equal(data.images[:, 0] > 0, data.masks)
    for i in range(len(data)):
        ys, xs = np.nonzero(data.images[i, 0].numpy())
        assert data.boxes[i].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_labels_are_the_scans_labels_and_train_and_test_scans_differ() -> None:
    from sklearn.datasets import load_digits

    targets = load_digits().target
    train = wsol_digits.make_dataset(300, seed=0, split="train")
    test = wsol_digits.make_dataset(300, seed=0, split="test")
    assert np.array_equal(train.labels.numpy(), targets[train.sources.numpy()])
    assert np.array_equal(test.labels.numpy(), targets[test.sources.numpy()])
    assert not set(train.sources.tolist()) & set(test.sources.tolist())
    assert len(train) == 300 and train[0][0].shape == (1, 48, 48) and isinstance(train[0][1], int)


def test_missing_scikit_learn_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        wsol_digits.make_dataset(2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        wsol_digits.make_dataset(2, split="val")
    with pytest.raises(ValueError, match="size"):
        wsol_digits.make_dataset(2, canvas=20, size=(12, 26))
    with pytest.raises(ValueError, match="seeds"):
        wsol_digits.run("unused", seeds=(0, 0))


def test_written_set_is_what_evaluate_reads(tmp_path: Path) -> None:
    from PIL import Image

    from camlens.datasets import ImageDataset

    data = wsol_digits.make_dataset(5, seed=2)
    test = wsol_digits.write_dataset(data, tmp_path)
    with open(tmp_path / "boxes.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "class", "x0", "y0", "x1", "y1"]
    assert rows[1] == ["images/00000.png", str(int(data.labels[0]))] + [str(int(v)) for v in data.boxes[0]]
    assert len(rows) == 6
    for i, sample in enumerate(test.samples):
        assert sample.label == int(data.labels[i])
        assert sample.boxes.tolist() == [data.boxes[i].tolist()]
        assert np.array_equal(np.asarray(Image.open(sample.masks[0])) > 0, data.masks[i].numpy())
    # what evaluate feeds the model (RGB, resized 48 -> 48, mean 0, std 1) is exactly the training pixels
    bundle = nets.model_bundle(nets.fc_net(), "fc")
    inputs = ImageDataset(test, size=bundle.size, mean=bundle.mean, std=bundle.std)
    for i in range(len(data)):
        x, index = inputs[i]
        assert index == i and x.shape == (3, 48, 48)
        for c in range(3):
            assert torch.equal(x[c], data.images[i, 0])


def test_bundle_feeds_the_first_channel_to_the_net() -> None:
    net = nets.fc_net(seed=1)
    bundle = nets.model_bundle(net, "fc")
    x = torch.rand(2, 1, 48, 48)
    rgb = torch.cat([x, torch.rand(2, 2, 48, 48)], 1)
    assert torch.equal(bundle.model(rgb), net(x))
    assert nets.conv_layer(net) == "features.relu4"
    gap = nets.make_nets(seed=0)["gap"]
    assert nets.conv_layer(gap) == "features"
    assert dict(bundle.model.named_modules())["net." + nets.conv_layer(net)] is net.features.relu4


def test_gap_and_gmp_nets_share_the_fc_nets_convs() -> None:
    made = nets.make_nets(seed=0)
    fc_convs = {k: v for k, v in made["fc"].state_dict().items() if k.startswith("features.")}
    for net in (made["gap"], made["gmp"]):
        assert not hasattr(net.features, "pool5")  # pool5 dropped, as VGGnet-GAP drops it
        for k, v in fc_convs.items():
            assert torch.equal(net.state_dict()[k], v), k
    x = torch.rand(2, 1, 48, 48)
    for net in made.values():
        assert net(x).shape == (2, 10)


def test_summarise_and_cell_by_hand() -> None:
    stats = tables.summarise([1.0, 2.0, 4.0, None])
    assert stats["mean"] == pytest.approx(7 / 3)
    assert (stats["min"], stats["max"]) == (1.0, 4.0)
    # sample sd: sqrt(((1 - 7/3)^2 + (2 - 7/3)^2 + (4 - 7/3)^2) / 2) = sqrt(7/3)
    assert stats["sd"] == pytest.approx(math.sqrt(7 / 3))
    assert stats["values"] == [1.0, 2.0, 4.0, None]
    assert tables.cell(stats) == "2.3 (1.0-4.0)"
    assert tables.cell(tables.summarise([18.25])) == "18.2"
    assert tables.summarise([18.25])["sd"] is None
    assert tables.cell(tables.summarise([None])) == "n/a"


def _fake_evaluate(calls: list[dict[str, Any]]) -> Any:
    """An evaluate that records its call and returns numbers set by the seed (in the bundle's name)."""

    def fake(model: Any, data: Any, methods: Any, **kwargs: Any) -> Evaluation:
        seed = int(model.name.split("seed ")[1].rstrip(")"))
        calls.append({"name": model.name, "data": data, "methods": list(methods), **kwargs})
        row = {
            "top1_cls_err": 10.0 + seed,
            "topk_cls_err": 1.0,
            "top1_loc_err": 40.0 + 10 * seed,
            "topk_loc_err": 30.0,
            "gt_known_loc_acc": 75.0 - seed,
            "maxboxacc": 80.0,
            "maxboxacc_v2": 60.0 + 3 * seed,
            "pxap": 50.0,
            "seconds_per_image": 0.01,
        }
        return Evaluation(list(methods), {m: dict(row) for m in methods}, len(data))

    return fake


def test_run_evaluates_each_net_with_evaluate_and_tables_its_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(evaluate_module, "evaluate", _fake_evaluate(calls))
    results = wsol_digits.run(tmp_path, seeds=(0, 2), n_train=64, n_test=8, epochs=1, progress=False, pictures=False)
    # one evaluate per net and seed, on the written test set, localisation metrics, the 12x12 layer
    assert [c["name"] for c in calls] == [f"{n} net (seed {s})" for s in (0, 2) for n in ("gap", "gmp", "fc")]
    by_net = {c["name"].split()[0]: c for c in calls[:3]}
    assert by_net["gap"]["layer"] == "net.features" and by_net["fc"]["layer"] == "net.features.relu4"
    assert by_net["gap"]["methods"] == ["cam", "gradcam", "gradcam++", "saliency"]
    assert by_net["fc"]["methods"] == ["gradcam", "gradcam++", "saliency"]  # CAM refused by camlens' head check
    for c in calls:
        assert c["metrics"] == "localization" and len(c["data"]) == 8
        assert c["data"].samples[0].masks  # masks attached: PxAP
    # statistics over seeds 0 and 2: top-1 loc err 40 and 60, GT-known err 25 and 27
    gap_cam = results["summary"]["gap"]["methods"]["cam"]
    assert gap_cam["top1_loc_err"]["mean"] == 50.0 and gap_cam["top1_loc_err"]["values"] == [40.0, 60.0]
    assert gap_cam["gt_known_loc_err"]["mean"] == 26.0
    assert results["summary"]["fc"]["methods"]["cam"]["applicable"] is False
    assert results["seeds"]["2"]["nets"]["gmp"]["methods"]["saliency"]["maxboxacc_v2"] == 66.0
    table = (tmp_path / "table.md").read_text()
    cells = "50.0 (40.0-60.0) | 30.0 (30.0-30.0) | 26.0 (25.0-27.0) | 80.0 (80.0-80.0) | 63.0 (60.0-66.0)"
    assert f"| CAM | GAP net (conv-GAP-linear) | {cells} |" in table
    assert "| CAM | FC net (conv-FC-FC) | n/a |" in table
    assert "| Backprop (saliency) | FC net (conv-FC-FC) | 50.0 (40.0-60.0) |" in table  # the paper's comparison row
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["seeds"] == [0, 2] and saved["config"]["threads"] == 1
    assert saved["command"][:3] == ["camlens", "bench", "wsol"] and "--seeds" in saved["command"]
    assert saved["command"][saved["command"].index("--seeds") + 1] == "0,2"
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__ and env["cpu"]
    assert set(saved["timing"]["per_seed"]) == {"0", "2"}
    with open(tmp_path / "table.csv") as f:
        rows = list(csv.DictReader(f))
    hit = [r for r in rows if r["network"] == "gap" and r["method"] == "cam" and r["metric"] == "top1_loc_err"]
    assert len(hit) == 1 and float(hit[0]["mean"]) == 50.0 and float(hit[0]["min"]) == 40.0


def test_tiny_real_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results = wsol_digits.run(tmp_path, seeds=(0,), n_train=96, n_test=24, epochs=1, progress=False, examples=2)
    for name in ("results.json", "table.md", "table.csv", "wsol_digits_dataset.png", "seed0/data/boxes.csv"):
        assert (tmp_path / name).is_file(), name
    for net in wsol_digits.NETS:
        assert (tmp_path / f"wsol_digits_{net}.png").is_file()
        assert (tmp_path / "seed0" / net / "table.csv").is_file()  # evaluate's own run folder
    nets_ = results["seeds"]["0"]["nets"]
    assert nets_["fc"]["methods"]["cam"]["applicable"] is False
    for net in ("gap", "gmp"):
        cam, grad = nets_[net]["methods"]["cam"], nets_[net]["methods"]["gradcam"]
        # CAM paper identity: Grad-CAM = CAM / (hw) on a GAP head (and on a GMP head, where the gradient's
        # spatial mean is w / (hw) too), so both give the same normalised maps, boxes and metrics
        for key in ("top1_loc_err", "topk_loc_err", "gt_known_loc_acc", "maxboxacc", "maxboxacc_v2"):
            assert cam[key] == pytest.approx(grad[key]), (net, key)
        # PxAP pools pixels into 1%-wide bins: the last float bit of CAM / (hw) moves a few pixels across an edge
        assert cam["pxap"] == pytest.approx(grad["pxap"], abs=0.01), net
    assert nets_["gap"]["images"] == 24


def test_cli_bench_defaults_are_the_docs_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from camlens.cli import main

    seen: dict[str, Any] = {}

    def fake_run(out: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "table.md").write_text("table\n")
        return {"timing": {"total_wall_s": 1.0}}

    monkeypatch.setattr(wsol_digits, "run", fake_run)
    assert main(["bench", "wsol", "--out", str(tmp_path / "o")]) == 0
    assert seen == {"seeds": [0, 1, 2], "n_train": 8000, "n_test": 1000, "epochs": 6, "threads": 1, "size": (12, 26)}
    assert main(["bench", "wsol", "--out", str(tmp_path / "o"), "--seed", "4", "--size", "20,36"]) == 0
    assert seen["seeds"] == [4] and seen["size"] == (20, 36)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
        (["--seeds", "1,1"], "--seeds needs distinct integers"),
        (["--size", "30,20"], "--size is MIN,MAX"),
        (["--size", "12"], "--size is MIN,MAX"),
    ],
)
def test_cli_bench_bad_flags(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from camlens.cli import main

    assert main(["bench", "wsol", *flags]) == 2
    assert message in capsys.readouterr().err
