"""Model-randomisation sanity checks (Adebayo et al. 2018): the check itself.

(The similarity measures are tested in ``test_similarity.py``, the figure in ``test_viz.py``.)

* a method whose map cannot depend on the weights (the input's intensity) fails the check;
* Grad-CAM on a small CNN trained here on scikit-learn's digits passes it;
* the user's model (weights, buffers, training flags, requires_grad, .grad) and the global random
  state are unchanged after a check;
* cascading randomisation re-initialises blocks 0..i at step i, independent only block i; default
  blocks group a normalisation layer with the block before it;
* ``SanityResult.plot`` and ``plot_results`` draw the figure of :func:`camlens.viz.plot_sanity`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import camlens
from camlens.methods.base import CAMMethod, Context
from camlens.metrics.sanity import (
    SanityResult,
    default_blocks,
    plot_results,
    randomized_models,
    sanity_check,
    spearman,
)
from tests import nets

# ---------------------------------------------------------------------------------------------------
# a small CNN trained on scikit-learn's digits


class DigitNet(nn.Module):
    """conv-BN-ReLU, strided conv-BN-ReLU, strided conv-ReLU (``features``, 4x4) -> GAP -> linear; 16x16 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def digits() -> tuple[DigitNet, torch.Tensor, float]:
    """A DigitNet trained for about 2 s (seeded), 8 held-out digits, and the accuracy on 397 held-out digits."""
    datasets = pytest.importorskip("sklearn.datasets")
    data = datasets.load_digits()
    x = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic sums, and fast on a shared machine
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = DigitNet()
            epochs, batch_size = 10, 32
            opt = torch.optim.Adam(model.parameters())
            schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=epochs * 44)
            model.train()
            for _ in range(epochs):
                for batch in train[torch.randperm(len(train))].split(batch_size):
                    opt.zero_grad()
                    F.cross_entropy(model(x[batch]), y[batch]).backward()
                    opt.step()
                    schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, x[test[:8]], accuracy


def test_digits_net_is_trained(digits: tuple[DigitNet, torch.Tensor, float]) -> None:
    # the checks below are about a *trained* network: make sure training worked
    assert digits[2] > 0.95  # 0.98 when written


class InputIntensity(CAMMethod):
    """A 'method' whose map is the input's intensity pooled to the layer: it ignores every weight."""

    needs_gradients: ClassVar[bool] = False

    def raw_maps(self, ctx: Context) -> torch.Tensor:
        h, w = ctx.activation.shape[-2:]
        intensity = F.adaptive_avg_pool2d(ctx.inputs.mean(1, keepdim=True), (h, w))
        return intensity.expand(-1, ctx.scores.shape[1], h, w)


@pytest.fixture
def registered_intensity() -> Iterator[str]:
    """InputIntensity registered as a method for the duration of one test only."""
    from camlens import registry

    name = "test-input-intensity"
    registry.register(name)(InputIntensity)
    try:
        yield name
    finally:
        registry.unregister(name)
    assert name not in camlens.methods()


def test_weight_independent_method_fails(
    digits: tuple[DigitNet, torch.Tensor, float], registered_intensity: str
) -> None:
    model, x, _ = digits
    result = sanity_check(model, x, registered_intensity, mode="cascading", progress=False)
    # the map is the same function of the input for every model: similarity 1 at every step
    np.testing.assert_allclose(result.spearman, 1.0, atol=1e-12)
    np.testing.assert_allclose(result.ssim, 1.0, atol=1e-9)
    assert not result.passed()
    assert result.changes_at() is None
    assert result.summary()["passed"] is False
    # the same with the class itself instead of a registered name, in independent mode
    independent = sanity_check(model, x, InputIntensity, mode="independent", progress=False)
    assert not independent.passed() and not independent.passed(step=0)


def test_gradcam_on_trained_net_passes(digits: tuple[DigitNet, torch.Tensor, float]) -> None:
    model, x, _ = digits
    result = sanity_check(model, x, "gradcam", mode="cascading", progress=False)
    assert result.layers == ["fc", "features.6", "features.3+features.4", "features.0+features.1"]
    assert result.spearman.shape == result.spearman_abs.shape == result.ssim.shape == (4, 8)
    assert result.layer == "features"
    # the layer is the output of ``features``: only the linear head runs after it
    assert result.position == ["downstream", "upstream", "upstream", "upstream"]
    assert result.passed()
    summary = result.summary()
    assert summary["passed"] is True and summary["spearman"] < 0.5
    # targets stay the original model's ids, also for the randomised models: step 0 recomputed by hand
    with torch.no_grad():
        ids = model(x).argmax(1)
        np.testing.assert_array_equal(result.targets, ids[:, None].numpy())
        ((_, fc_random),) = [(label, copy.deepcopy(m)) for label, m in randomized_models(model, ["fc"])]
        assert bool((fc_random(x).argmax(1) != ids).any())  # the random head's own top-1 differs
    original = camlens.explain(model, x, "gradcam", targets=ids).maps
    randomised = camlens.explain(fc_random, x, "gradcam", layer="features", targets=ids).maps
    np.testing.assert_allclose(result.spearman[0], spearman(randomised, original).flatten().numpy(), atol=1e-12)
    rows = result.to_rows()
    assert len(rows) == 4 * 8 and rows[0]["block"] == "fc" and rows[-1]["sample"] == 7
    assert rows[9]["spearman"] == pytest.approx(float(result.spearman[1, 1]))
    assert result.maps is not None and result.maps.shape == (5, 4, 16, 16)
    assert result.blank is not None and result.blank.shape == (4, 8)
    assert summary["blank"] == float(result.blank[-1].mean())


def test_guided_backprop_ignores_the_head(digits: tuple[DigitNet, torch.Tensor, float]) -> None:
    # Adebayo et al.'s finding, on the trained digits net: re-initialising the linear head changes
    # Grad-CAM's and the gradient's maps much more than guided backprop's (Spearman when written:
    # guided backprop 0.72, Grad-CAM 0.41, saliency 0.27)
    model, x, _ = digits
    guided, gradcam, gradient = (
        sanity_check(model, x, method, blocks=["fc"], progress=False).mean("spearman")[0]
        for method in ("guided-backprop", "gradcam", "saliency")
    )
    assert guided > gradcam + 0.2 and guided > gradient + 0.2


# ---------------------------------------------------------------------------------------------------
# the user's model is never changed


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [(n, m.training) for n, m in model.named_modules()],
        "requires_grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "grad": [(n, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()],
        "ids": [id(p) for p in model.parameters()],
    }


@pytest.mark.filterwarnings("ignore:scorecam gives a constant map")  # untrained GapNet: some maps are 0
@pytest.mark.parametrize("method", ["gradcam", "guided-backprop", "scorecam"])
@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_model_unchanged(method: str, mode: str) -> None:
    model = nets.GapNet()
    model.fc.weight.requires_grad_(False)  # a mixed state to hand back
    model.features[0].weight.grad = torch.ones_like(model.features[0].weight)
    before = _snapshot(model)
    rng = torch.get_rng_state()
    sanity_check(model, nets.inputs(2, size=12), method, mode=mode, bn="recalibrate", progress=False)
    after = _snapshot(model)
    assert before["state"].keys() == after["state"].keys()  # type: ignore[attr-defined]
    for key, value in before["state"].items():  # type: ignore[attr-defined]
        assert torch.equal(value, after["state"][key]), key  # type: ignore[index]
    for key in ("training", "requires_grad", "ids"):
        assert before[key] == after[key], key
    for (name, g0), (_, g1) in zip(before["grad"], after["grad"]):  # type: ignore[call-overload]
        assert (g0 is None and g1 is None) or torch.equal(g0, g1), name
    assert torch.equal(rng, torch.get_rng_state())  # the global random stream is left alone


# ---------------------------------------------------------------------------------------------------
# blocks, cascading and independent


def test_default_blocks_gapnet() -> None:
    model = nets.GapNet()
    # features.2 (conv) + features.3 (its BatchNorm) form one block; from the output down
    assert default_blocks(model, nets.inputs()) == [("fc",), ("features.2", "features.3"), ("features.0",)]


def test_default_blocks_efficientnet_structure() -> None:
    # the architecture only (random weights): the classifier, the head conv+bn, 16 MBConv, the stem
    from camlens.zoo import EfficientNetLite0

    blocks = default_blocks(EfficientNetLite0().eval(), torch.zeros(1, 3, 64, 64))
    assert blocks[:3] == [("_fc",), ("_conv_head", "_bn1"), ("_blocks.15",)]
    assert blocks[-2:] == [("_blocks.0",), ("_conv_stem", "_bn0")]
    assert len(blocks) == 19


def _gapnet() -> nn.Module:
    """GapNet whose BatchNorm looks trained (not at its reset values 1, 0, 0, 1), so a reset shows."""
    model = nets.GapNet()
    bn = model.features[3]
    with torch.no_grad():
        bn.weight.fill_(2.0)
        bn.bias.fill_(0.5)
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(4.0)
    return model


def _changed(model: nn.Module, copy_: nn.Module) -> set[str]:
    """Modules (fc, features.k) with a parameter or buffer that differs between the two models."""
    after = copy_.state_dict()
    return {key.rsplit(".", 1)[0] for key, value in model.state_dict().items() if not torch.equal(value, after[key])}


def test_cascading_and_independent_block_sets() -> None:
    model = _gapnet()
    blocks = default_blocks(model, nets.inputs())
    cascading = [(label, _changed(model, m)) for label, m in randomized_models(model, blocks, "cascading")]
    independent = [(label, _changed(model, m)) for label, m in randomized_models(model, blocks, "independent")]
    labels = ["fc", "features.2+features.3", "features.0"]
    assert [c[0] for c in cascading] == [c[0] for c in independent] == labels
    # cascading: step i has blocks 0..i re-initialised; independent: block i only
    expected = [{"fc"}, {"fc", "features.2", "features.3"}, {"fc", "features.2", "features.3", "features.0"}]
    assert [c[1] for c in cascading] == expected
    assert [c[1] for c in independent] == [{"fc"}, {"features.2", "features.3"}, {"features.0"}]


def test_same_block_same_weights_in_both_modes() -> None:
    model = _gapnet()
    blocks = [("fc",), ("features.2", "features.3")]
    cascading = {label: copy.deepcopy(m) for label, m in randomized_models(model, blocks, "cascading", seed=5)}
    independent = {label: copy.deepcopy(m) for label, m in randomized_models(model, blocks, "independent", seed=5)}
    last = cascading["features.2+features.3"]
    assert torch.equal(last.fc.weight, independent["fc"].fc.weight)
    assert torch.equal(last.features[2].weight, independent["features.2+features.3"].features[2].weight)
    # documented BatchNorm handling (bn="reset"): affine 1 / 0, running statistics 0 / 1
    bn = last.features[3]
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.running_var, torch.ones(8))
    assert torch.equal(bn.bias, torch.zeros(8)) and torch.equal(bn.running_mean, torch.zeros(8))
    # a module's weights do not depend on how modules are grouped into blocks
    grouped = dict(randomized_models(model, [("fc", "features.2", "features.3")], "cascading", seed=5))
    grouped_model = grouped["fc+features.2+features.3"]
    for key, value in last.state_dict().items():
        assert torch.equal(value, grouped_model.state_dict()[key]), key
    # another seed, other weights
    other = dict(randomized_models(model, blocks[:1], "cascading", seed=6))
    assert not torch.equal(other["fc"].fc.weight, last.fc.weight)


def test_recalibrated_batchnorm_statistics() -> None:
    model = _gapnet()
    x = nets.inputs(4, size=12)
    ((_, m),) = randomized_models(model, [("features.2", "features.3")], bn="recalibrate", inputs=x)
    with torch.no_grad():
        pre = m.features[:3](x)  # the randomised BatchNorm's input
    torch.testing.assert_close(m.features[3].running_mean, pre.mean((0, 2, 3)))
    torch.testing.assert_close(m.features[3].running_var, pre.var((0, 2, 3), unbiased=True))
    assert m.features[3].momentum == model.features[3].momentum and not m.features[3].training


def test_init_normal_truncated() -> None:
    model = nets.GapNet()
    ((_, m),) = randomized_models(model, ["features.0"], init="normal")
    w = m.features[0].weight.detach()
    std = (2.0 / w[0].numel()) ** 0.5  # fan_in = 3 * 3 * 3
    assert float(w.abs().max()) <= 2 * std
    assert torch.equal(m.features[0].bias, torch.zeros(8))


def test_blocks_argument() -> None:
    model = nets.GapNet()
    x = nets.inputs(2, size=12)
    result = sanity_check(
        model, x, "gradcam", layer="features.4", blocks=["fc", "features.2+features.3"], progress=False
    )
    assert result.layers == ["fc", "features.2+features.3"] and result.position == ["downstream", "upstream"]
    with pytest.raises(ValueError, match="closest: features"):
        sanity_check(model, x, "gradcam", blocks=["featurs"], progress=False)
    with pytest.raises(ValueError, match="no parameters"):
        sanity_check(model, x, "gradcam", blocks=["pool"], progress=False)
    with pytest.raises(ValueError, match="share parameters"):
        sanity_check(model, x, "gradcam", blocks=["features", "features.0"], progress=False)
    with pytest.raises(ValueError, match="mode must be"):
        sanity_check(model, x, "gradcam", mode="top-down", progress=False)
    with pytest.raises(TypeError, match="no option"):
        sanity_check(model, x, "gradcam", batch_size=3, progress=False)


def test_plot_doors_draw_the_viz_figure(tmp_path: Path, digits: tuple[DigitNet, torch.Tensor, float]) -> None:
    pytest.importorskip("matplotlib")
    from camlens import viz

    model, x, _ = digits
    result = sanity_check(model, x[:2], "gradcam", progress=False)
    assert isinstance(result, SanityResult) and "gradcam" in repr(result)
    images = [x[0, 0].numpy()] * 2
    path = result.plot(tmp_path / "sanity.png", images=images)
    # 4 steps, a photo column and 5 map columns of 1 in, one row of maps: 13 x 5.95 in at 110 dpi, 1430 x 654
    assert Image.open(path).size == (1430, 654)
    same = viz.plot_sanity([result], tmp_path / "viz.png", images=images)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(same)))
    # a method checked on coarser steps is drawn at the columns that leave the same blocks randomised
    blocks = ["fc+features.6", "features.3+features.4+features.0+features.1"]
    coarse = sanity_check(model, x[:2], "guided-backprop", blocks=blocks, progress=False)
    both = plot_results([result, coarse], tmp_path / "both.png")
    same = viz.plot_sanity([result, coarse], tmp_path / "viz_both.png")
    np.testing.assert_array_equal(np.asarray(Image.open(both)), np.asarray(Image.open(same)))
    unrelated = SanityResult("x", "cascading", ["conv9"], np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match="not among the blocks"):
        plot_results([result, unrelated], tmp_path / "x.png")
