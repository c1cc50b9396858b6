"""Any target concept (issue 13): models with several inputs, detectors, segmenters, embeddings.

* several inputs: every registered method on a two-input net (works, or refuses with one clear error),
  rows follow their samples (a batch of 2 == two batches of 1), the other input is never differentiated,
  nothing left behind after an exception; Grad-CAM against weights worked out by hand;
* ``camlens.tasks`` targets against hand-written values on outputs written out here, and against
  pytorch-grad-cam's targets (``FasterRCNNBoxScoreTarget``, ``SemanticSegmentationTarget``, its
  embeddings tutorial's ``SimilarityToConceptTarget``) with its GradCAM / EigenCAM on the same model and
  layer (skipped when absent), compared after its own normalisation as in test_peers.py;
* torchvision detectors and segmenters with random weights (no download).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import camlens
from camlens.tasks import BoxScore, ClassDetections, RegionScore, Similarity, detect
from tests import nets
from tests.test_contract import _Snapshot

METHODS = camlens.methods()
# methods whose definition excludes this net, and the error that says why
REFUSED = {"cam": "CAM needs a model whose output is linear"}
# fewer random perturbations than the defaults: the rows' bookkeeping, not the estimate, is tested here
FAST = {
    "rise": {"n_masks": 64, "batch_size": 24},
    "lime": {"n_samples": 64, "batch_size": 24},
    "integrated-gradients": {"steps": 8, "batch_size": 6},
    "smoothgrad": {"samples": 8, "batch_size": 6},
    "smoothgrad-guided": {"samples": 8, "batch_size": 6},
}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _their_normalisation(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from pytorch_grad_cam.utils.image import scale_cam_image

    # compute_cam_per_layer: ReLU, min-max, cv2 resize; aggregate_multi_layers: ReLU, min-max again
    return scale_cam_image(np.maximum(scale_cam_image(np.maximum(raw, 0), size[::-1]), 0))


# ------------------------------------------------------------------------------------------- several inputs


def _two_inputs() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return nets.TwoInputNet(), nets.inputs(2, 8), torch.randn(2, 5, generator=g)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_takes_several_inputs_or_says_why(method: str) -> None:
    model, x, q = _two_inputs()
    layer = "features" if camlens.get_method(method).takes_layer else None
    options = FAST.get(method, {})
    snapshot = _Snapshot(model)
    q_before = q.clone()
    if method in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[method]):
            _quiet(camlens.explain, model, (x, q), method=method, layer=layer, targets=[1, 2], **options)
        snapshot.check()
        return
    both = _quiet(camlens.explain, model, (x, q), method=method, layer=layer, targets=[1, 2], **options)
    snapshot.check()
    assert torch.equal(q, q_before) and q.grad is None
    # each row ran with its own sample's question: a batch of 2 == two batches of 1
    for i in range(2):
        one = _quiet(
            camlens.explain, model, (x[i : i + 1], q[i : i + 1]), method=method, layer=layer, targets=[i + 1], **options
        )
        scale = float(one.raw.abs().max())
        assert float((both.raw[i] - one.raw[0]).abs().max()) <= 1e-4 * scale + 1e-12
        assert torch.allclose(both.scores[i], one.scores[0], atol=1e-5)
    # with the other sample's question the scores differ: the question did reach the model
    swapped = _quiet(camlens.explain, model, (x, q.flip(0)), method=method, layer=layer, targets=[1, 2], **options)
    assert not torch.allclose(swapped.scores, both.scores)
    # keyword inputs, the image named
    named = _quiet(
        camlens.explain, model, {"q": q, "x": x}, method=method, layer=layer, targets=[1, 2], image="x", **options
    )
    assert torch.allclose(named.raw, both.raw, atol=1e-6, rtol=1e-5)


def test_gradcam_of_a_two_input_net_by_hand() -> None:
    model, x, q = _two_inputs()
    exp = camlens.explain(model, (x, q), layer="features", targets=[[0, 2], [1, 1]])
    a = model.features(x).detach()  # (2, 4, 4, 4)
    hw = a.shape[2] * a.shape[3]
    # S_c = fc.w[c, :4] . mean(A) + (question terms): dS_c/dA_k = w[c, k] / hw at every position,
    # so Grad-CAM's alpha_k = w[c, k] / hw and the map is sum_k w[c, k] / hw * A_k
    w = model.fc.weight.detach()[:, :4]
    ids = torch.tensor([[0, 2], [1, 1]])
    expected = torch.einsum("bkc,bchw->bkhw", w[ids] / hw, a)
    assert torch.allclose(exp.raw, expected, atol=1e-6)
    logits = model(x, q).detach()
    assert torch.allclose(exp.scores, logits.gather(1, ids))


def test_the_image_can_be_any_positional_input() -> None:
    model, x, q = _two_inputs()

    class QuestionFirst(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return self.net(x, q)

    flipped = camlens.explain(QuestionFirst().eval(), (q, x), layer="net.features", targets=1, image=1)
    plain = camlens.explain(model, (x, q), layer="features", targets=1)
    assert torch.allclose(flipped.raw, plain.raw)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "integrated-gradients"])
def test_several_inputs_leave_nothing_behind_after_an_exception(method: str) -> None:
    model, x, q = _two_inputs()
    snapshot = _Snapshot(model)
    calls = []

    def target(out: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == (1 if method == "gradcam" else 2):
            raise KeyError("target callable failed")
        return out[:, 0]

    layer = "features" if camlens.get_method(method).takes_layer else None
    with pytest.raises(KeyError, match="target callable failed"):
        _quiet(camlens.explain, model, (x, q), method=method, layer=layer, targets=target)
    snapshot.check()
    assert model(x, q).shape == (2, 3)  # the pre-hook is gone: the model takes its own inputs again


@pytest.mark.parametrize(
    ("inputs", "image", "error", "match"),
    [
        ("tuple", 2, ValueError, "not an index of the 2 inputs"),
        ("dict", "pixels", ValueError, "not a key of the inputs"),
        ("tuple", 1, ValueError, r"shape \(B, C, H, W\)"),  # the question is 2-D: not an image batch
        ("tensor", 1, ValueError, "single tensor"),
        ("empty", None, ValueError, "empty tuple"),
    ],
)
def test_bad_image_names_are_one_clear_error(inputs: str, image, error, match: str) -> None:
    model, x, q = _two_inputs()
    given = {"tuple": (x, q), "dict": {"x": x, "q": q}, "tensor": x, "empty": ()}[inputs]
    with pytest.raises(error, match=match):
        camlens.explain(model, given, layer="features", image=image)


# ------------------------------------------------------------------------------------- targets, by hand


def _fake_detections() -> list[dict[str, torch.Tensor]]:
    """Two images' detections written out: boxes, labels, scores."""
    return [
        {
            "boxes": torch.tensor([[0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 20.0], [50.0, 50.0, 60.0, 60.0]]),
            "labels": torch.tensor([1, 1, 2]),
            "scores": torch.tensor([0.9, 0.8, 0.7]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)},
    ]


def test_box_score_by_hand() -> None:
    dets = _fake_detections()
    # box [0, 0, 10, 10] (area 100): IoU 100 / 120 with det 0, 100 / 200 = 0.5 with det 1 (not above 0.5)
    scores = BoxScore([[0, 0, 10, 10], [50, 50, 60, 60], [50, 50, 60, 60]], [1, 2, 1])(dets)
    assert scores.shape == (2, 3)
    expected = torch.tensor([[100 / 120 + 0.9, 1.0 + 0.7, 0.0], [0.0, 0.0, 0.0]])  # label 1 at box 2: no match
    assert torch.allclose(scores, expected)
    assert torch.allclose(
        BoxScore([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 2], reduce="sum")(dets), expected[:, :2].sum(1)
    )
    # the second best box alone is exactly at the threshold: pytorch-grad-cam's strict ">" does not match it
    only = [{k: v[1:2] for k, v in dets[0].items()}]
    assert float(BoxScore([0, 0, 10, 10], 1)(only)) == 0.0
    assert float(BoxScore([0, 0, 10, 10], 1, iou_threshold=0.4)(only)) == pytest.approx(0.5 + 0.8)


def test_class_detections_by_hand() -> None:
    dets = _fake_detections()
    assert torch.allclose(ClassDetections(1)(dets), torch.tensor([0.9 + 0.8, 0.0]))
    assert torch.allclose(ClassDetections([1, 2], min_score=0.85)(dets), torch.tensor([[0.9, 0.0], [0.0, 0.0]]))


def test_region_score_by_hand() -> None:
    logits = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[1, 2] = mask[3, 4] = True
    got = RegionScore(2, mask=mask)({"out": logits, "aux": logits})
    assert torch.allclose(got, logits[:, 2, 1, 2] + logits[:, 2, 3, 4])
    boxed = RegionScore([0, 1], box=[1, 2, 3, 4])(logits)  # x in [1, 3), y in [2, 4)
    assert torch.allclose(boxed, logits[:, :2, 2:4, 1:3].sum((-2, -1)))
    with pytest.raises(ValueError, match="the mask is 3x4"):
        RegionScore(0, mask=torch.ones(4, 3))(logits)


def test_similarity_by_hand() -> None:
    emb = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    ref = torch.tensor([0.0, 2.0])
    assert torch.allclose(Similarity(ref)(emb), torch.tensor([4 / 5, 0.0]))
    per_sample = Similarity(torch.tensor([[3.0, 4.0], [-1.0, 0.0]]))(emb)
    assert torch.allclose(per_sample, torch.tensor([1.0, -1.0]))


# ------------------------------------------------------------------------------------------------ detection


SIZE = 64  # detector input (and resize) size: small, for CI time


@pytest.fixture(scope="module")
def faster_rcnn() -> torch.nn.Module:
    return nets.detector("fasterrcnn_resnet50_fpn", size=SIZE)


def _proper(det: dict[str, torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first k detections with a box of positive area (random weights also make flat boxes)."""
    b = det["boxes"]
    keep = ((b[:, 2] - b[:, 0]) > 1) & ((b[:, 3] - b[:, 1]) > 1)
    return b[keep][:k], det["labels"][keep][:k]


def test_faster_rcnn_box_score_gradcam_matches_pytorch_grad_cam(faster_rcnn) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    x = nets.inputs(1, SIZE, seed=5).sigmoid()
    boxes, labels = _proper(detect(faster_rcnn, x)[0], 3)
    snapshot = _Snapshot(faster_rcnn)
    summed = camlens.explain(
        faster_rcnn, x, layer="backbone.body.layer4", targets=BoxScore(boxes, labels, reduce="sum")
    )
    snapshot.check()
    assert summed.raw.shape == (1, 1, SIZE // 32, SIZE // 32)
    # each reference box is a detection of the model: it matches itself, IoU 1 (to float rounding) + its score
    det = detect(faster_rcnn, x)[0]
    own = det["scores"][[int((det["boxes"] == b).all(1).nonzero()[0]) for b in boxes]]
    assert float(summed.scores[0, 0]) == pytest.approx(float((1.0 + own).sum()), abs=1e-4)
    module = faster_rcnn.get_submodule("backbone.body.layer4")
    with pgc.GradCAM(model=faster_rcnn, target_layers=[module]) as cam:
        theirs = cam(input_tensor=x, targets=[FasterRCNNBoxScoreTarget(labels.numpy(), boxes.numpy())])
    raw = summed.raw[:, 0].double().numpy()
    assert np.abs(_their_normalisation(raw, x.shape[-2:]) - theirs).max() < 1e-4


def test_faster_rcnn_eigencam_at_an_fpn_level_matches_pytorch_grad_cam(faster_rcnn) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    x = nets.inputs(1, SIZE, seed=5).sigmoid()
    layer = "backbone.fpn.layer_blocks.2"
    ours = camlens.explain(faster_rcnn, x, method="eigencam", layer=layer, targets=ClassDetections(1), center=True)
    with pgc.EigenCAM(model=faster_rcnn, target_layers=[faster_rcnn.get_submodule(layer)]) as cam:
        theirs = cam(input_tensor=x, targets=[lambda out: out["scores"].sum()])
    raw = ours.raw[:, 0].double().numpy()
    err = min(float(np.abs(_their_normalisation(s * raw, x.shape[-2:]) - theirs).max()) for s in (1, -1))
    assert err < 1e-4


def test_faster_rcnn_batch_explains_each_image_with_its_own_boxes(faster_rcnn) -> None:
    x = nets.inputs(2, SIZE, seed=6).sigmoid()
    found = [_proper(d, 2) for d in detect(faster_rcnn, x)]
    boxes = torch.stack([b for b, _ in found])
    labels = torch.stack([lab for _, lab in found])
    both = camlens.explain(faster_rcnn, x, targets=BoxScore(boxes, labels))
    assert both.layer == "backbone.body.layer4"  # the automatic layer of a detector: its backbone's C5
    assert bool((both.scores > 1.0).all())  # every image's boxes found again in its own detections
    # the images in the other order, each with its own boxes: the same maps and scores, swapped
    # (a batch of 1 is not compared: its float rounding picks other near-duplicate detections of the
    # random-weight model, which have the same score but another gradient)
    swapped = camlens.explain(faster_rcnn, x.flip(0), targets=BoxScore(boxes.flip(0), labels.flip(0)))
    assert torch.allclose(swapped.raw.flip(0), both.raw, atol=1e-6 * float(both.raw.abs().max()))
    assert torch.allclose(swapped.scores.flip(0), both.scores)


def test_a_list_of_images_is_one_batch(faster_rcnn) -> None:
    x = nets.inputs(2, SIZE, seed=6).sigmoid()
    target = ClassDetections(1)
    listed = camlens.explain(faster_rcnn, list(x), method="eigencam", targets=target)
    stacked = camlens.explain(faster_rcnn, x, method="eigencam", targets=target)
    assert torch.equal(listed.raw, stacked.raw) and torch.equal(listed.scores, stacked.scores)
    with pytest.raises(ValueError, match="differ in size"):
        camlens.explain(faster_rcnn, [x[0], x[1, :, :32]], method="eigencam", targets=target)


def test_a_per_region_layer_is_refused(faster_rcnn) -> None:
    x = nets.inputs(1, SIZE, seed=5).sigmoid()
    snapshot = _Snapshot(faster_rcnn)
    with pytest.raises(ValueError, match="rows for a batch of 1 images"):
        camlens.explain(faster_rcnn, x, layer="roi_heads.box_roi_pool", targets=ClassDetections(1))
    snapshot.check()

    def failing(out: list) -> torch.Tensor:
        raise KeyError("target callable failed")

    with pytest.raises(KeyError, match="target callable failed"):
        camlens.explain(faster_rcnn, [x[0]], targets=failing)
    snapshot.check()


@pytest.mark.parametrize("name", ["retinanet_resnet50_fpn", "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_other_detectors(name: str) -> None:
    model = nets.detector(name)
    x = nets.inputs(1, SIZE, seed=5).sigmoid()
    boxes, labels = _proper(detect(model, x)[0], 2)
    snapshot = _Snapshot(model)
    exp = camlens.explain(model, x, targets=BoxScore(boxes, labels))
    snapshot.check()
    expected_layer = "backbone.features.1" if name.startswith("ssd") else "backbone.body.layer4"
    assert exp.layer == expected_layer
    assert exp.raw.shape[:2] == (1, 2) and bool(torch.isfinite(exp.raw).all())
    assert bool((exp.scores >= 1.0).all())  # each box matches its own detection: IoU 1 + score
    assert float(exp.raw.abs().max()) > 0


# --------------------------------------------------------------------------------------------- segmentation


class _Out(torch.nn.Module):
    """pytorch-grad-cam's tutorial wrapper: the segmenter's ``["out"]`` as a tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@pytest.mark.parametrize("name", ["fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"])
def test_region_score_matches_pytorch_grad_cam(name: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    model = nets.segmenter(name)
    x = nets.inputs(2, 40, seed=4).sigmoid()
    with torch.no_grad():
        logits = model(x)["out"]
    # the tutorial's mask: the pixels predicted as the class
    category = 1
    masks = (logits.argmax(1) == category).float()
    snapshot = _Snapshot(model)
    ours = camlens.explain(model, x, targets=RegionScore(category, mask=masks))
    snapshot.check()
    assert torch.allclose(ours.scores[:, 0], (logits[:, category] * masks).sum((-2, -1)), rtol=1e-4)
    wrapped = _Out(model)
    layer = ours.layer
    with pgc.GradCAM(model=wrapped, target_layers=[model.get_submodule(layer)]) as cam:
        theirs = cam(input_tensor=x, targets=[SemanticSegmentationTarget(category, m.numpy()) for m in masks])
    raw = ours.raw[:, 0].double().numpy()
    for i in range(2):
        assert np.abs(_their_normalisation(raw[i : i + 1], x.shape[-2:]) - theirs[i : i + 1]).max() < 1e-4


# ----------------------------------------------------------------------------------------------- similarity


class _Embedder(torch.nn.Module):
    """conv -> ReLU (``features``) -> global average pooling -> linear: a (B, 6) embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU())
        self.proj = torch.nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(x).mean((2, 3)))


def test_similarity_matches_a_hand_written_cosine_and_pytorch_grad_cam() -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    model = _Embedder().eval()
    x, reference = nets.inputs(2, 16, seed=8), nets.inputs(1, 16, seed=9)
    target = Similarity.to_image(model, reference[0])
    ours = camlens.explain(model, x, layer="features", targets=target)
    with torch.no_grad():
        e, r = model(x), model(reference)[0]
    cosine = (e @ r) / (e.norm(dim=1) * r.norm())
    assert torch.allclose(ours.scores[:, 0], cosine, atol=1e-6)

    class SimilarityToConceptTarget:  # pytorch-grad-cam's embeddings tutorial, verbatim
        def __init__(self, features: torch.Tensor) -> None:
            self.features = features

        def __call__(self, model_output: torch.Tensor) -> torch.Tensor:
            return torch.nn.CosineSimilarity(dim=0)(model_output, self.features)

    with pgc.GradCAM(model=model, target_layers=[model.features]) as cam:
        theirs = cam(input_tensor=x, targets=[SimilarityToConceptTarget(r)] * 2)
    raw = ours.raw[:, 0].double().numpy()
    assert np.abs(_their_normalisation(raw, x.shape[-2:]) - theirs).max() < 1e-5
    # per-row references follow their samples in the perturbation methods' chunks too
    refs = F.normalize(torch.randn(2, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    chunked = _quiet(
        camlens.explain, model, x, method="scorecam", layer="features", targets=Similarity(refs), batch_size=3
    )
    for i in range(2):
        one = _quiet(
            camlens.explain, model, x[i : i + 1], method="scorecam", layer="features", targets=Similarity(refs[i])
        )
        assert torch.allclose(chunked.raw[i], one.raw[0], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- CLI


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from camlens.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory):
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photo") / "cat.png"
    Image.fromarray(skimage_data.chelsea()).resize((150, 100)).save(path)
    return path


def test_cli_explains_every_detection_above_min_score(tmp_path, photo, capsys) -> None:
    from camlens import zoo

    code, out, err = _cli(
        capsys,
        "explain",
        str(photo),
        "--model",
        "tests.nets:cli_detector",
        "--min-score",
        "0.3",
        "--json",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    (record,) = json.loads(out)["images"]
    # the detections, found independently: the same preprocessing, the detector itself
    bundle = zoo.load_model("tests.nets:cli_detector")
    assert bundle.task == "detection" and bundle.mean == (0.0, 0.0, 0.0)
    image = zoo.load_image(photo)
    x, geometry = zoo.preprocess_with_geometry(image, bundle.size, bundle.mean, bundle.std)
    det = detect(bundle.model, x)[0]
    kept = det["scores"] >= 0.3
    assert 0 < int(kept.sum()) == len(record["explanations"])
    for e, score, label, box in zip(
        record["explanations"], det["scores"][kept], det["labels"][kept], det["boxes"][kept]
    ):
        assert e["explained"]["score"] == pytest.approx(float(score), abs=1e-5)
        assert e["class_id"] == int(label)
        assert e["explained"]["box"] == geometry.box_to_original(tuple(round(float(v)) for v in box))
        assert e["logit"] == pytest.approx(1.0 + float(score), abs=1e-4)  # matched itself: IoU 1 + score
        assert (tmp_path / "run" / e["files"]["overlay"]).is_file()
        assert np.load(tmp_path / "run" / e["files"]["map"]).shape == (100, 150)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model", "tests.nets:cli_detector", "--min-score", "1.5"], "--min-score must be in [0, 1]"),
        (["--model", "tests.nets:cli_detector", "--region", "0,0,10,10"], "is a detection model"),
        (["--model", "tests.nets:cli_segmenter", "--region", "10,0,5,10"], "X0 < X1"),
        (["--model", "tests.nets:cli_segmenter", "--region", "0,0,500,10"], "0 <= x0 < x1 <= "),
        (["--model", "tests.nets:cli_segmenter", "--mask", "small.npy"], "the mask is 10x5 but the photo is 150x100"),
        (["--model", "tests.nets:cli_segmenter", "--mask", "objects.npy"], "not a readable PNG or .npy"),
        (["--model", "tests.nets:GapNet", "--mask", "small.npy"], "is a classification model"),
    ],
)
def test_cli_task_flags_are_checked(tmp_path, photo, capsys, monkeypatch, argv, match) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "small.npy", np.ones((5, 10)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    code, _, err = _cli(capsys, "explain", str(photo), *argv, "--out", str(tmp_path / "run"))
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not any((tmp_path / "run").glob("*/*.png"))


def test_cli_segmenter_region_equals_the_same_mask(tmp_path, photo, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    mask = np.zeros((100, 150), dtype=np.uint8)
    mask[20:60, 40:120] = 255
    from PIL import Image

    Image.fromarray(mask).save(tmp_path / "mask.png")
    maps = []
    for flags in (["--region", "40,20,120,60"], ["--mask", "mask.png"]):
        out_dir = tmp_path / flags[0].strip("-")
        code, out, err = _cli(
            capsys,
            "explain",
            str(photo),
            "--model",
            "tests.nets:cli_segmenter",
            "--class",
            "2",
            *flags,
            "--json",
            "--out",
            str(out_dir),
        )
        assert code == 0, err
        (e,) = json.loads(out)["images"][0]["explanations"]
        assert e["class_id"] == 2
        maps.append((e["logit"], np.load(out_dir / e["files"]["map"])))
    # photo -> model input (520 x 520): the box's region and the mask's nearest-neighbour resize cover the same
    # input pixels, so the two runs explain the same target
    assert maps[0][0] == pytest.approx(maps[1][0], rel=1e-5)
    assert np.abs(maps[0][1] - maps[1][1]).max() < 1e-5
