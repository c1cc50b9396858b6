"""The built-in digits WSOL benchmark: exact data, and a tiny end-to-end run of the CAM paper's tables."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from camlens import wsol_digits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = wsol_digits.make_dataset(30, seed=3)
    b = wsol_digits.make_dataset(30, seed=3)
    c = wsol_digits.make_dataset(30, seed=4)
    for name in ("images", "labels", "boxes", "masks", "sources"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (30, 1, 48, 48) and a.images.dtype == torch.float32
    assert float(a.images.min()) == 0.0 and float(a.images.max()) <= 1.0


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
        h = y1 - y0
        assert 12 <= h <= 26  # the digit's height range (its ink touches the resized patch's rows)
    assert clutter_seen >= 55  # fragments are really there (a few may find no room)


def test_no_clutter_means_only_the_digit() -> None:
    data = wsol_digits.make_dataset(10, seed=1, clutter=0)
    assert torch.equal(data.images[:, 0] > 0, data.masks)


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


def test_gap_and_gmp_nets_share_the_fc_nets_convs() -> None:
    nets = wsol_digits.make_nets(seed=0)
    fc, gap_net, gmp_net = nets["fc"], nets["gap"], nets["gmp"]
    fc_convs = {k: v for k, v in fc.state_dict().items() if k.startswith("features.")}
    for net in (gap_net, gmp_net):
        assert not hasattr(net.features, "pool5")  # pool5 dropped, as VGGnet-GAP drops it
        for k, v in fc_convs.items():
            assert torch.equal(net.state_dict()[k], v), k
    x = torch.rand(2, 1, 48, 48)
    for net in nets.values():
        assert net(x).shape == (2, 10)


def test_tiny_run_end_to_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib")
    results = wsol_digits.run(tmp_path, n_train=96, n_test=24, epochs=1, threads=1, progress=False, examples=2)
    for name in (
        "results.json",
        "table.md",
        "table.csv",
        "wsol_digits_dataset.png",
        *(f"wsol_digits_{n}.png" for n in wsol_digits.NETS),
    ):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["n_test"] == 24 and saved["nets"].keys() == {"gap", "gmp", "fc"}
    nets = results["nets"]
    assert nets["fc"]["methods"]["cam"]["applicable"] is False
    for net in ("gap", "gmp"):
        cam, grad = nets[net]["methods"]["cam"], nets[net]["methods"]["gradcam"]
        # CAM paper identity: Grad-CAM = CAM / (hw) on a GAP head (and on a GMP head, where the gradient's
        # spatial mean is w / (hw) too), so both give the same normalised maps, boxes and metrics
        for key in ("top1_loc_err", "top5_loc_err", "gt_known_loc_acc", "maxboxacc", "maxboxacc_v2"):
            assert cam[key] == pytest.approx(grad[key]), (net, key)
    for net in nets.values():
        c = net["classification"]
        assert 0 <= c["top5_cls_err"] <= c["top1_cls_err"] <= 100
        for m in net["methods"].values():
            if m.get("applicable"):
                assert m["n"] == 24
                # localisation needs the right class, so it can only be worse than classification
                assert m["top1_loc_err"] >= c["top1_cls_err"] - 1e-9
                assert m["top5_loc_err"] >= c["top5_cls_err"] - 1e-9
                assert m["top1_loc_err"] >= m["gt_known_loc_err"] - 1e-9
    with open(tmp_path / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 4 - 1 + 1  # 11 applicable (method, net) pairs + CAM on the FC net as n/a
    table = (tmp_path / "table.md").read_text()
    assert "Table 1" in table and "Table 2" in table and "| CAM | FC net" in table
