"""Targets and method names: every form a user writes gives the right ids and scores; every mistake a
ValueError / TypeError that names the problem.

Expected ids and scores come from the model's own logits (a plain forward), never from camlens.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from tests import nets

METHODS = camlens.methods()
# methods that explain class ids only (CAM reads the class's row of the linear head)
CLASS_ID_ONLY = [m for m in METHODS if camlens.get_method(m).needs_class_ids]
ANY_TARGET = [m for m in METHODS if not camlens.get_method(m).needs_class_ids]
B, CLASSES, SIZE = 2, 5, 8


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return nets.GapNet(channels=8, classes=CLASSES)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return nets.inputs(B, SIZE)


@pytest.fixture(scope="module")
def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    assert out.shape == (B, CLASSES)
    # distinct logits per sample, so top-k and argmax are unambiguous
    assert all(len(set(row.tolist())) == CLASSES for row in out)
    return out


# ---------------------------------------------------------------- every form


def _expected_ids(spec: Any, logits: torch.Tensor) -> torch.Tensor:
    """Ids written out per form, from the logits for None / topK."""
    order = logits.argsort(dim=1, descending=True)
    table = {
        "None": order[:, :1],
        "int": torch.tensor([[3], [3]]),
        "list": torch.tensor([[4], [0]]),
        "tuple": torch.tensor([[2], [1]]),
        "list-of-lists": torch.tensor([[4, 0, 1], [1, 2, 2]]),
        "tensor-2d": torch.tensor([[2, 1], [0, 4]]),
        "tensor-1d": torch.tensor([[2], [1]]),
        "numpy-1d": torch.tensor([[0], [3]]),
        "top3": order[:, :3],
        " TOP3 ": order[:, :3],
        "top5": order,
        "top1": order[:, :1],
    }
    return table[spec]


FORMS: dict[str, Any] = {
    "None": None,
    "int": 3,
    "list": [4, 0],
    "tuple": (2, 1),
    "list-of-lists": [[4, 0, 1], [1, 2, 2]],
    "tensor-2d": torch.tensor([[2, 1], [0, 4]]),
    "tensor-1d": torch.tensor([2, 1]),
    "numpy-1d": np.array([0, 3]),
    "top3": "top3",
    " TOP3 ": " TOP3 ",
    "top5": "top5",
    "top1": "top1",
}


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("method", METHODS)
def test_class_id_forms(method: str, form: str, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> None:
    exp = camlens.explain(model, x, method=method, targets=FORMS[form])
    ids = _expected_ids(form, logits)
    assert exp.targets is not None
    assert exp.targets.dtype == torch.long
    assert exp.targets.tolist() == ids.tolist()
    torch.testing.assert_close(exp.scores, logits.gather(1, ids), rtol=1e-5, atol=1e-6)
    assert exp.raw.shape[:2] == ids.shape and exp.maps.shape == (*ids.shape, SIZE, SIZE)


@pytest.mark.parametrize("method", METHODS)
def test_k_targets_at_once_equal_one_target_at_a_time(
    method: str, model: nn.Module, x: torch.Tensor, logits: torch.Tensor
) -> None:
    """The batched K-target computation (one backward for all K) matches K single-target calls."""
    exp = camlens.explain(model, x, method=method, targets="top3")
    ids = logits.topk(3, dim=1).indices
    singles = torch.cat([camlens.explain(model, x, method=method, targets=ids[:, k]).raw for k in range(3)], dim=1)
    scale = max(1.0, float(singles.abs().max()))
    torch.testing.assert_close(exp.raw, singles, rtol=1e-5, atol=1e-5 * scale)


def _scores_1d(out: torch.Tensor) -> torch.Tensor:
    return out[:, 2] - out[:, 0]


def _scores_2d(out: torch.Tensor) -> torch.Tensor:
    return torch.stack([out[:, 1], 2 * out[:, 3], out.sum(1)], dim=1)


@pytest.mark.parametrize(("target", "k"), [(_scores_1d, 1), (_scores_2d, 3)])
@pytest.mark.parametrize("method", ANY_TARGET)
def test_callable_forms(method: str, target: Any, k: int, model: nn.Module, x: torch.Tensor, logits: torch.Tensor):
    exp = camlens.explain(model, x, method=method, targets=target)
    assert exp.targets is None
    expected = target(logits)
    expected = expected[:, None] if expected.dim() == 1 else expected
    torch.testing.assert_close(exp.scores, expected, rtol=1e-5, atol=1e-5)
    assert exp.raw.shape[:2] == (B, k)
    assert torch.isfinite(exp.raw).all()


def test_a_callable_target_selecting_a_class_equals_that_class_id(model: nn.Module, x: torch.Tensor) -> None:
    by_id = camlens.explain(model, x, method="gradcam", targets=[4, 1])
    by_callable = camlens.explain(
        model, x, method="gradcam", targets=lambda out: out.gather(1, torch.tensor([[4], [1]]))
    )
    torch.testing.assert_close(by_id.raw, by_callable.raw, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scalar", [np.int64(3), torch.tensor(3)], ids=["numpy-int64", "0d-tensor"])
def test_integer_scalars_broadcast_like_an_int(scalar: Any, model: nn.Module, x: torch.Tensor) -> None:
    exp = camlens.explain(model, x, method="gradcam", targets=scalar)
    assert exp.targets is not None and exp.targets.tolist() == [[3], [3]]


# ---------------------------------------------------------------- every mistake

ERRORS: dict[str, tuple[Any, type[Exception], str]] = {
    "list-too-long": ([1, 2, 3], ValueError, r"3 class ids for a batch of 2"),
    "list-too-short": ([1], ValueError, r"1 class ids for a batch of 2"),
    "tensor-1d-wrong-length": (torch.tensor([1, 2, 3]), ValueError, r"3 class ids for a batch of 2"),
    "lists-wrong-batch": ([[1, 2]] * 3, ValueError, r"shape \(3, 2\) for a batch of 2"),
    "tensor-2d-wrong-batch": (torch.zeros(1, 2, dtype=torch.long), ValueError, r"shape \(1, 2\) for a batch of 2"),
    "ragged-lists": ([[1, 2], [3]], ValueError, r"list of lists of equal length"),
    "zero-targets": (torch.zeros(2, 0, dtype=torch.long), ValueError, r"K >= 1"),
    "3-d": (torch.zeros(2, 1, 1, dtype=torch.long), ValueError, r"1-D or 2-D"),
    "id-too-large": (5, ValueError, r"class id 5 is out of range.*0\.\.4"),
    "id-negative": (-1, ValueError, r"class id -1 is out of range"),
    "id-too-large-in-list": ([0, 7], ValueError, r"class id 7 is out of range"),
    "id-negative-in-lists": ([[0, 1], [-3, 2]], ValueError, r"class id -3 is out of range"),
    "id-too-large-in-tensor": (torch.tensor([[0], [5]]), ValueError, r"class id 5 is out of range"),
    "float-scalar": (3.0, TypeError, r"must be integers"),
    "float-list": ([0.5, 1.0], TypeError, r"must be integers.*float"),
    "float-tensor": (torch.tensor([1.0, 2.0]), TypeError, r"must be integers.*float"),
    "bool": (True, TypeError, r"not a bool"),
    "bool-false": (False, TypeError, r"not a bool"),
    "bool-list": ([True, False], TypeError, r"must be integers.*bool"),
    "bool-tensor": (torch.tensor([True, False]), TypeError, r"must be integers.*bool"),
    "top0": ("top0", ValueError, r"'top0'.*K >= 1"),
    "topX": ("topX", ValueError, r"'topX' is not understood"),
    "top-space": ("top 3", ValueError, r"not understood"),
    "other-string": ("cat", ValueError, r"'cat' is not understood.*topK"),
    "top99": ("top99", ValueError, r"asks for 99 classes but the model has only 5"),
    "top6": ("top6", ValueError, r"asks for 6 classes but the model has only 5"),
    "callable-wrong-batch": (lambda out: out[:1, 0], ValueError, r"shape \(2,\) or \(2, K\) for a batch of 2"),
    "callable-wrong-batch-2d": (lambda out: out[:1], ValueError, r"shape \(2,\) or \(2, K\).*got \(1, 5\)"),
    "callable-scalar": (lambda out: out.sum(), ValueError, r"shape \(2,\) or \(2, K\).*got \(\)"),
    "callable-3-d": (lambda out: out[:, :, None], ValueError, r"shape \(2,\) or \(2, K\).*got \(2, 5, 1\)"),
    "callable-non-tensor": (lambda out: 3.0, TypeError, r"must return a tensor, got float"),
    "callable-list": (lambda out: [out[0, 0], out[1, 0]], TypeError, r"must return a tensor, got list"),
}


@pytest.mark.parametrize("case", list(ERRORS))
@pytest.mark.parametrize("method", METHODS)
def test_target_mistakes_name_the_problem(method: str, case: str, model: nn.Module, x: torch.Tensor) -> None:
    targets, error, message = ERRORS[case]
    if callable(targets) and camlens.get_method(method).needs_class_ids:
        error, message = ValueError, "needs class ids.*gradcam"
    with pytest.raises(error, match=message):
        camlens.explain(model, x, method=method, targets=targets)


def test_a_wrong_callable_shape_is_reported_as_returned(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"got \(1,\)$"):
        camlens.explain(model, x, method="gradcam", targets=lambda out: out[:1, 0])


@pytest.mark.parametrize("targets", [object(), {"class": 1}], ids=["object", "dict"])
def test_unsupported_target_type_is_a_type_error(targets: Any, model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises((TypeError, ValueError), match="targets"):
        camlens.explain(model, x, method="gradcam", targets=targets)


# ---------------------------------------------------------------- outputs that are not (batch, classes)


class _DictNet(nn.Module):
    """A detector-style output: a dict of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nets.GapNet(classes=CLASSES)
        self.eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"logits": logits, "box": logits[:, :4].tanh()}


class _Segmenter(nn.Module):
    """(B, 3, H, W) per-pixel class scores: class ids do not apply, a callable does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU()
        )
        self.head = nn.Conv2d(6, 3, 1)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.head(self.features(x)), size=x.shape[-2:], mode="bilinear")


def _region(out: torch.Tensor) -> torch.Tensor:
    return out[:, 1].sum((1, 2))


@pytest.mark.parametrize("targets", [None, 1, [0, 1], "top2"], ids=["None", "int", "list", "top2"])
@pytest.mark.parametrize("method", METHODS)
def test_class_ids_need_a_batch_by_classes_output(method: str, targets: Any, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"shape \(batch, classes\), got dict.*callable"):
        camlens.explain(_DictNet(), x, method=method, targets=targets)
    seg = _Segmenter()
    layer = "features" if camlens.get_method(method).takes_layer else None
    with pytest.raises(ValueError, match=r"shape \(batch, classes\), got \(2, 3, 8, 8\).*callable"):
        camlens.explain(seg, x, method=method, layer=layer, targets=targets)


@pytest.mark.parametrize("method", ANY_TARGET)
def test_a_callable_works_on_other_outputs(method: str, x: torch.Tensor) -> None:
    seg = _Segmenter()
    layer = "features" if camlens.get_method(method).takes_layer else None
    exp = camlens.explain(seg, x, method=method, layer=layer, targets=_region)
    with torch.no_grad():
        expected = _region(seg(x))[:, None]
    assert exp.targets is None
    torch.testing.assert_close(exp.scores, expected, rtol=1e-5, atol=1e-5)
    assert exp.raw.shape[:2] == (B, 1) and exp.maps.shape == (B, 1, SIZE, SIZE)
    assert torch.isfinite(exp.raw).all() and exp.raw.abs().sum() > 0

    net = _DictNet()
    exp = camlens.explain(net, x, method=method, targets=lambda out: out["logits"][:, 2])
    with torch.no_grad():
        expected = net(x)["logits"][:, 2:3]
    torch.testing.assert_close(exp.scores, expected, rtol=1e-5, atol=1e-6)
    assert set(exp.output) == {"logits", "box"}


def test_a_callable_on_a_segmenter_equals_a_hand_computed_gradcam(x: torch.Tensor) -> None:
    seg = _Segmenter()
    exp = camlens.explain(seg, x, method="gradcam", layer="features", targets=_region)
    store: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        store["a"] = out
        return out.clone()

    handle = seg.features.register_forward_hook(keep)
    try:
        score = _region(seg(x)).sum()
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(score, store["a"])
    a = store["a"].detach()
    expected = (g.mean((2, 3))[:, :, None, None] * a).sum(1, keepdim=True)
    torch.testing.assert_close(exp.raw, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", CLASS_ID_ONLY)
def test_cam_with_a_callable_suggests_gradcam(method: str, model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="method='gradcam'"):
        camlens.explain(model, x, method=method, targets=lambda out: out[:, 0])


# ---------------------------------------------------------------- options and method names


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_lists_the_method_options(method: str, model: nn.Module, x: torch.Tensor) -> None:
    options = [
        p
        for p in inspect.signature(camlens.get_method(method).__init__).parameters
        if p not in ("self", "model", "layer")
    ]
    with pytest.raises(TypeError, match=re.escape(f"method {method!r} has no option 'bogus_option'")) as info:
        camlens.explain(model, x, method=method, bogus_option=1)
    listed = str(info.value).split("its options:")[-1]
    for option in options:
        assert option in listed
    if not options:
        assert "none" in listed


def test_known_options_are_listed_and_accepted(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(TypeError, match=r"no option 'batchsize'.*batch_size") as info:
        camlens.explain(model, x, method="scorecam", batchsize=4)
    assert "score" in str(info.value) and "channel_softmax" in str(info.value)
    with pytest.raises(TypeError, match=r"no option 'bogus', 'other'"):
        camlens.explain(model, x, method="gradcam", other=1, bogus=2)
    with pytest.raises(TypeError, match=r"its options: counterfactual"):
        camlens.explain(model, x, method="gradcam", bogus=1)
    plain = camlens.explain(model, x, method="gradcam", targets=[1, 2])
    counter = camlens.explain(model, x, method="gradcam", targets=[1, 2], counterfactual=True)
    torch.testing.assert_close(counter.raw, -plain.raw)


@pytest.mark.parametrize(
    ("name", "close"),
    [("gradcm", "gradcam"), ("scorcam", "scorecam"), ("ablation-cam2", "ablationcam"), ("eigen_cams", "eigencam")],
)
def test_unknown_method_suggests_close_names(name: str, close: str, model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=rf"unknown method '{name}'; closest: [^;]*\b{close}\b") as info:
        camlens.explain(model, x, method=name)
    for registered in METHODS:  # the full list, so the user can pick
        assert registered in str(info.value)


def test_unrelated_method_name_lists_the_methods(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"unknown method 'zzzz'; available: cam, ") as info:
        camlens.explain(model, x, method="zzzz")
    assert "closest" not in str(info.value)


@pytest.mark.parametrize(
    ("alias", "cls"),
    [
        ("grad-cam", camlens.GradCAM),
        ("Grad-CAM", camlens.GradCAM),
        ("GradCAM", camlens.GradCAM),
        (" gradcam ", camlens.GradCAM),
        ("grad_cam", camlens.GradCAM),
        ("GradCAM++", camlens.GradCAMPlusPlus),
        ("Grad-CAM++", camlens.GradCAMPlusPlus),
        ("XGrad-CAM", camlens.XGradCAM),
        ("Score-CAM", camlens.ScoreCAM),
        ("Ablation-CAM", camlens.AblationCAM),
        ("Eigen-CAM", camlens.EigenCAM),
        ("HiResCAM", camlens.HiResCAM),
        ("Layer-CAM", camlens.LayerCAM),
        ("CAM", camlens.CAM),
        ("Guided-Backprop", camlens.GuidedBackprop),
    ],
)
def test_aliases_the_registry_promises(alias: str, cls: type, model: nn.Module, x: torch.Tensor) -> None:
    """registry.get_method: case-insensitive, '-' and '_' ignored ('grad-cam' == 'gradcam')."""
    assert camlens.get_method(alias) is cls
    assert camlens.explain(model, x, method=alias, targets=1).method == cls.name


@pytest.mark.parametrize(
    "method",
    METHODS,
)
def test_every_registered_name_ignores_case_and_separators(method: str) -> None:
    cls = camlens.get_method(method)
    for variant in (method.upper(), method.replace("-", "_"), method.replace("-", "")):
        assert camlens.get_method(variant) is cls, variant


@pytest.mark.parametrize("method", [camlens.GradCAM, None], ids=["class", "None"])
def test_method_of_the_wrong_type_is_a_type_error(method: Any, model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(TypeError, match="method"):
        camlens.explain(model, x, method=method)


def test_ids_made_under_inference_mode_work_with_gradient_methods() -> None:
    import camlens
    from tests.nets import GapNet

    model, x = GapNet().eval(), torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        ids = torch.tensor([[1], [3]])
    exp = camlens.explain(model, x, method="gradcam", targets=ids)
    assert exp.targets is not None and exp.targets.tolist() == [[1], [3]]
    assert torch.equal(exp.raw, camlens.explain(model, x, method="gradcam", targets=[[1], [3]]).raw)
