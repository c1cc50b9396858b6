"""Integrated Gradients and SmoothGrad: worked by hand, completeness, against captum, seeding, chunks, cost."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import camlens
from camlens.methods.integrated import RULES, quadrature, smoothgrad_noise
from tests import nets

pytestmark = pytest.mark.usefixtures("one_thread")


class _Square(nn.Module):
    """S(x) = 0.5 * sum(x^2) per sample, as a (B, 1) output: dS/dx = x."""

    def __init__(self) -> None:
        super().__init__()
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.pow(2).flatten(1).sum(1, keepdim=True)


class _Linear(nn.Module):
    """S(x) = w . x + 3 per sample: dS/dx = w everywhere."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1, keepdim=True) + 3.0


class _ReluNet(nn.Module):
    """conv-ReLU-conv-ReLU-pool-linear with ``nn.ReLU`` modules only (captum's guided backprop hooks modules)."""

    def __init__(self, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.c2, self.r2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(8, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.r2(self.c2(self.r1(self.c1(x)))).mean((2, 3)))


# ------------------------------------------------------------------------------------ the rules


def test_quadrature_points_and_weights_by_hand() -> None:
    a, w = quadrature("riemann_left", 4)
    assert a.tolist() == [0.0, 0.25, 0.5, 0.75] and w.tolist() == [0.25] * 4
    a, w = quadrature("riemann_right", 4)
    assert a.tolist() == [0.25, 0.5, 0.75, 1.0]
    a, w = quadrature("riemann_middle", 4)
    assert a.tolist() == [0.125, 0.375, 0.625, 0.875]
    a, w = quadrature("riemann_trapezoid", 5)
    assert a.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and w.tolist() == [0.125, 0.25, 0.25, 0.25, 0.125]
    # Gauss-Legendre with 2 points: nodes 1/2 -+ 1/(2 sqrt 3), weights 1/2
    a, w = quadrature("gausslegendre", 2)
    torch.testing.assert_close(a, torch.tensor([0.5 - 0.5 / math.sqrt(3), 0.5 + 0.5 / math.sqrt(3)], dtype=a.dtype))
    assert w.tolist() == pytest.approx([0.5, 0.5])
    for rule in RULES:
        assert float(quadrature(rule, 7)[1].sum()) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------ worked by hand


@pytest.mark.parametrize("rule", RULES)
def test_ig_of_a_linear_model_is_input_minus_baseline_times_w(rule: str) -> None:
    w = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    x = torch.tensor([[2.0, 1.0, -4.0]]).view(1, 3, 1, 1)
    exp = camlens.explain(_Linear(w), x, method="integrated-gradients", targets=0, rule=rule, steps=3, baseline=1.0)
    # (x - x') * w = [1, 0, -5] * [1, -2, 0.5] = [1, 0, -2.5]; sum = -1.5 = S(x) - S(1) = (2-2-2+3) - (1-2+0.5+3)
    torch.testing.assert_close(exp.pixels.flatten(), torch.tensor([1.0, 0.0, -2.5]))
    assert exp.scores.item() == 1.0


@pytest.mark.parametrize(
    ("rule", "error"),
    # the sum misses S(x) - S(0) = 4 by -+ sum_i x_i^2 / (2n) = 8 / 8 for the left / right rule (n = 4)
    [("riemann_left", -1.0), ("riemann_right", 1.0), ("riemann_middle", 0.0), ("riemann_trapezoid", 0.0)],
)
def test_ig_of_a_quadratic_by_hand(rule: str, error: float) -> None:
    # S = 0.5 |x|^2, g(a x) = a x, so IG_i = x_i^2 * sum_s w_s a_s: exactly x_i^2 / 2 for rules exact on
    # linear integrands, x_i^2 (1/2 -+ 1/(2n)) for the left / right Riemann sums
    x = torch.tensor([2.0, -2.0]).view(1, 2, 1, 1)
    exp = camlens.explain(_Square(), x, method="integrated-gradients", targets=0, rule=rule, steps=4)
    assert exp.pixels.sum().item() == pytest.approx(4.0 + error, abs=1e-6)  # S(x) - S(0) = 4
    torch.testing.assert_close(exp.pixels.flatten(), torch.full((2,), 2.0 + error / 2))


def test_smoothgrad_of_a_linear_model_is_w_and_squared_is_w_squared() -> None:
    w = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    x = torch.tensor([[2.0, 1.0, -4.0]]).view(1, 3, 1, 1)
    plain = camlens.explain(_Linear(w), x, method="smoothgrad", targets=0, samples=5)
    squared = camlens.explain(_Linear(w), x, method="smoothgrad", targets=0, samples=5, squared=True)
    torch.testing.assert_close(plain.pixels.flatten(), w.flatten())
    torch.testing.assert_close(squared.pixels.flatten(), w.flatten() ** 2)
    assert plain.raw.item() == 2.0


def test_noise_zero_is_saliency_and_guided_backprop() -> None:
    model, x = _ReluNet(), nets.inputs(2, 8)
    for noisy, plain in (("smoothgrad", "saliency"), ("smoothgrad-guided", "guided-backprop")):
        ours = camlens.explain(model, x, method=noisy, targets="top2", samples=3, noise=0.0)
        ref = camlens.explain(model, x, method=plain, targets="top2")
        torch.testing.assert_close(ours.pixels, ref.pixels, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------ completeness


def _completeness_error(model: nn.Module, x: torch.Tensor, rule: str, steps: int) -> float:
    exp = camlens.explain(
        model, x, method="integrated-gradients", targets=[[0, 1]], rule=rule, steps=steps, progress=False
    )
    with torch.no_grad():
        gap = model(x)[:, :2] - model(torch.zeros_like(x))[:, :2]
    return float(((exp.pixels.sum((2, 3, 4)) - gap).abs() / gap.abs()).max())


def test_completeness_converges_as_steps_grow() -> None:
    # float64, so the rule's error is measured and not rounding; relative error |sum IG - (S(x) - S(0))| /
    # |S(x) - S(0)|, worst of 2 targets, at 4 / 16 / 64 / 256 steps (measured once):
    #   left 2.1e-1 4.0e-2 1.1e-2 1.9e-3, right 1.0e-1 5.4e-2 8.0e-3 3.1e-3, middle 8.5e-2 1.1e-2 6.5e-4 6.9e-4,
    #   trapezoid 9.2e-2 1.9e-2 1.8e-3 5.6e-4, Gauss-Legendre 1.2e-2 1.1e-3 1.9e-4 6.1e-5.
    # The integrand is piecewise linear (ReLU kinks along the path), so the errors shrink unevenly.
    model, x = _ReluNet(classes=2).double(), nets.inputs(1, 16, dtype=torch.float64) * 3
    errors = {rule: [_completeness_error(model, x, rule, n) for n in (4, 16, 64, 256)] for rule in RULES}
    for rule, errs in errors.items():
        assert errs[3] < 5e-3 and errs[3] < errs[0] / 20 and errs[3] < errs[1], (rule, errs)
    assert errors["gausslegendre"][3] < 1e-4, errors["gausslegendre"]
    assert errors["gausslegendre"][1] < min(errors[r][1] for r in RULES[:4]) / 5, errors


# ------------------------------------------------------------------------------------ against captum


def _captum(model: nn.Module, x: torch.Tensor, targets: list[list[int]], make: object, **kw: object) -> torch.Tensor:
    """captum's attribution for each target column: (B, K, C, H, W)."""
    cols = []
    for k in range(len(targets[0])):
        t = [row[k] for row in targets]
        cols.append(make(model).attribute(x, target=t, **kw).detach())  # type: ignore[operator, attr-defined]
    return torch.stack(cols, 1)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("baseline", ["zero", "blur", "tensor"])
def test_integrated_gradients_match_captum(rule: str, baseline: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model, x = _ReluNet(), nets.inputs(2, 12)
    targets = [[1, 3], [2, 0]]
    if baseline == "tensor":
        start: object = torch.linspace(-1, 1, 3).view(1, 3, 1, 1).expand(1, 3, 12, 12)
        theirs_base = torch.broadcast_to(start, x.shape)  # type: ignore[arg-type]
    elif baseline == "blur":
        from camlens.metrics.faithfulness import blur_substrate

        start, theirs_base = "blur", blur_substrate(x)
    else:
        start, theirs_base = "zero", torch.zeros_like(x)
    steps = 20
    ours = camlens.explain(
        model, x, method="integrated-gradients", targets=targets, rule=rule, steps=steps, baseline=start, batch_size=7
    )
    theirs = _captum(
        model, x, targets, captum_attr.IntegratedGradients, baselines=theirs_base, n_steps=steps, method=rule
    )
    if rule == "riemann_trapezoid":
        theirs = theirs * steps / (steps - 1)  # captum's trapezoid weighs its n points 1/n instead of 1/(n-1)
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours.pixels, theirs, rtol=1e-5, atol=1e-5 * scale)


def test_integrated_gradients_match_captum_on_resnet18() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = nets.inputs(2, 32)
    ours = camlens.explain(model, x, method="integrated-gradients", targets=[[3], [7]], steps=16)
    theirs = _captum(model, x, [[3], [7]], captum_attr.IntegratedGradients, n_steps=16)
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours.pixels, theirs, rtol=1e-5, atol=1e-5 * scale)


def _inject(monkeypatch: pytest.MonkeyPatch, noise: torch.Tensor) -> None:
    """captum's NoiseTunnel adds ``noise`` (B, N, C, H, W) instead of its own draws (rows image-major)."""
    from captum.attr import NoiseTunnel

    def add(inputs: torch.Tensor, stdev: float, n: int) -> torch.Tensor:
        assert n == noise.shape[1]
        return inputs.repeat_interleave(n, dim=0) + noise.flatten(0, 1)

    monkeypatch.setattr(NoiseTunnel, "_add_noise_to_input", staticmethod(add))


@pytest.mark.parametrize("method", ["smoothgrad", "smoothgrad-guided"])
@pytest.mark.parametrize("squared", [False, True])
def test_smoothgrad_matches_captum_noise_tunnel(monkeypatch: pytest.MonkeyPatch, method: str, squared: bool) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model, x = _ReluNet(), nets.inputs(2, 12)
    targets, samples = [[1, 3], [2, 0]], 10
    ours = camlens.explain(
        model, x, method=method, targets=targets, samples=samples, noise=0.2, seed=5, squared=squared, batch_size=3
    )
    _inject(monkeypatch, smoothgrad_noise(x, samples, 0.2, seed=5))
    inner = captum_attr.Saliency if method == "smoothgrad" else captum_attr.GuidedBackprop
    extra = {"abs": False} if method == "smoothgrad" else {}
    theirs = _captum(
        model,
        x,
        targets,
        lambda m: captum_attr.NoiseTunnel(inner(m)),
        nt_type="smoothgrad_sq" if squared else "smoothgrad",
        nt_samples=samples,
        stdevs=1.0,  # ignored: the injected noise is already scaled
        **extra,
    )
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours.pixels, theirs, rtol=1e-6, atol=1e-6 * scale)


# ------------------------------------------------------------------------------------ noise and seeds


def test_noise_is_seeded_per_sample_and_scaled_to_the_range() -> None:
    x = torch.stack([torch.zeros(3, 8, 8), torch.linspace(-2, 2, 192).view(3, 8, 8)])  # ranges 0 and 4
    noise = smoothgrad_noise(x, 400, noise=0.1, seed=3)
    assert noise.shape == (2, 400, 3, 8, 8)
    assert noise[0].abs().max() == 0  # a constant image gets no noise
    assert float(noise[1].std()) == pytest.approx(0.4, rel=0.02)  # 0.1 x (2 - -2)
    # sample s is the same draw in every batch, whatever the batch or the number of samples
    torch.testing.assert_close(smoothgrad_noise(x[1:], 7, 0.1, seed=3), noise[1:, :7])
    assert not torch.equal(smoothgrad_noise(x[1:], 7, 0.1, seed=4), noise[1:, :7])
    torch.testing.assert_close(smoothgrad_noise(x.double(), 2, 0.1, 3).float(), noise[:, :2])  # same draws


def test_smoothgrad_is_reproducible_and_the_seed_matters() -> None:
    model, x = _ReluNet(), nets.inputs(2, 8)
    a = camlens.explain(model, x, method="smoothgrad", samples=4, seed=1)
    b = camlens.explain(model, x, method="smoothgrad", samples=4, seed=1, batch_size=1)
    c = camlens.explain(model, x, method="smoothgrad", samples=4, seed=2)
    torch.testing.assert_close(a.pixels, b.pixels, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(a.pixels, c.pixels)


def test_smoothgrad_guided_is_the_mean_of_guided_backprop_on_noisy_copies() -> None:
    model, x = _ReluNet(), nets.inputs(1, 8)
    noise = smoothgrad_noise(x, 6, 0.15, seed=0)
    ours = camlens.explain(model, x, method="smoothgrad-guided", targets=[[2, 1]], samples=6)
    each = [camlens.explain(model, x + noise[:, s], method="guided-backprop", targets=[[2, 1]]) for s in range(6)]
    torch.testing.assert_close(ours.pixels, torch.stack([e.pixels for e in each]).mean(0), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------ chunks and cost


@pytest.mark.parametrize("method", ["integrated-gradients", "smoothgrad", "smoothgrad-guided"])
def test_chunking_does_not_change_results(method: str) -> None:
    model, x = nets.SharedActNet(), nets.inputs(3, 8)
    opts = {"steps": 5} if method == "integrated-gradients" else {"samples": 5}
    big = camlens.explain(model, x, method=method, targets="top2", batch_size=1000, **opts)
    for size in (1, 4):
        small = camlens.explain(model, x, method=method, targets="top2", batch_size=size, **opts)
        torch.testing.assert_close(small.pixels, big.pixels, rtol=1e-5, atol=1e-6)


class _Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(int(x.shape[0]))
        return self.inner(x)


@pytest.mark.parametrize("method", ["integrated-gradients", "smoothgrad"])
def test_cost_is_one_clean_forward_plus_one_forward_per_chunk(method: str) -> None:
    model = _Counting(_ReluNet())
    opts = {"steps": 50} if method == "integrated-gradients" else {"samples": 50}
    camlens.explain(model, nets.inputs(3, 8), method=method, targets="top2", batch_size=64, **opts)
    assert model.rows == [3, 64, 64, 22]  # the clean batch, then 150 rows (3 images x 50) in chunks of 64


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rule": "simpson"}, "rule='simpson' is not known"),
        ({"steps": 0}, "steps must be a positive int"),
        ({"rule": "riemann_trapezoid", "steps": 1}, "steps >= 2"),
        ({"baseline": "black"}, "baseline='black' is not known"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_integrated_gradients_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        camlens.explain(_ReluNet(), nets.inputs(1, 8), method="integrated-gradients", **options)


def test_a_baseline_that_does_not_fit_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\) does not broadcast to the inputs \(1, 3, 8, 8\)"):
        camlens.explain(_ReluNet(), nets.inputs(1, 8), method="integrated-gradients", baseline=torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"noise": -0.1}, "noise must be a fraction"), ({"seed": -1}, "seed must be"), ({"samples": 0}, "samples")],
)
def test_smoothgrad_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        camlens.explain(_ReluNet(), nets.inputs(1, 8), method="smoothgrad", **options)


def test_the_row_loop_reports_progress_and_can_be_cancelled() -> None:
    from camlens._perturb import Cancelled, observe

    w = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    x = torch.tensor([[2.0, 1.0, -4.0], [1.0, 1.0, 1.0]]).view(2, 3, 1, 1)
    seen: list[tuple[int, int, str]] = []
    with observe(lambda done, total, desc: seen.append((done, total, desc))):
        camlens.explain(_Linear(w), x, method="integrated-gradients", targets=0, steps=3, batch_size=4)
    # 2 images x 3 steps = 6 rows, 4 per chunk: before the first chunk, after 4, after 6
    assert seen == [(0, 6, "Integrated Gradients"), (4, 6, "Integrated Gradients"), (6, 6, "Integrated Gradients")]

    def stop(done: int, total: int, desc: str) -> None:
        if done:
            raise Cancelled

    model = _Linear(w)
    with observe(stop), pytest.raises(Cancelled):
        camlens.explain(model, x, method="smoothgrad", targets=0, samples=4, batch_size=2)
    assert all(p.grad is None for p in model.parameters()) and not any(m._forward_hooks for m in model.modules())
