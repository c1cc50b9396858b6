"""Vision transformers and channels-last maps: token sequences and (B, h, w, C) read as (B, C, h, w) grids.

Every expected map is computed here without camlens: a forward hook keeps the layer's output in the
model's ordinary autograd graph, ``torch.autograd.grad`` gives the gradient, and the grid is cut by hand
(drop the prefix tokens, N -> (h, w), channels first; or permute a channels-last map). Models have random
weights (``weights=None`` / ``pretrained=False``); timm tests are skipped without timm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import camlens
from camlens import cli
from camlens.capture import find_layer, token_grid
from tests.test_contract import _hooks, _Snapshot

VIT_LAYER = "encoder.layers.encoder_layer_11.ln_1"


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vit_b_16() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision initialises the head to zero: no gradient
    return model


@pytest.fixture(scope="module")
def swin_t() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.swin_t(weights=None).eval()


def _image(batch: int, size: int = 224, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hand_layer_and_grads(
    model: nn.Module, x: torch.Tensor, module: nn.Module, ids: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The layer's output in the model's own layout and dS_k/d(output) for each target column, by plain autograd."""
    kept: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, out: kept.append(out))
    try:
        with torch.enable_grad():
            out = model(x)
            scores = out.gather(1, ids)
            grads = [
                torch.autograd.grad(scores[:, k].sum(), kept[0], retain_graph=True)[0] for k in range(ids.shape[1])
            ]
    finally:
        handle.remove()
    return kept[0].detach(), grads


def _gradcam(a: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Grad-CAM by the paper on a (B, C, h, w) grid: mean gradient per channel, weighted sum (before ReLU)."""
    return torch.stack([(g.mean((2, 3), keepdim=True) * a).sum(1) for g in grads], 1)


def _tokens_to_grid(t: torch.Tensor, prefix: int, side: int) -> torch.Tensor:
    """Drop the prefix tokens, N -> (side, side), channels first: written out without unflatten/permute helpers."""
    b, _, c = t.shape
    patches = t[:, prefix:, :]
    return patches.reshape(b, side, side, c).transpose(2, 3).transpose(1, 2)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------- exactness on torchvision vit_b_16 and swin_t


class _Counting:
    """torch.autograd.grad, counted (True for a batched call)."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self.grad = torch.autograd.grad

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(bool(kwargs.get("is_grads_batched", False)))
        return self.grad(*args, **kwargs)

    def explain(self, *args: Any, **kwargs: Any) -> camlens.Explanation:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.autograd, "grad", self)
            return camlens.explain(*args, **kwargs)


@pytest.fixture(scope="module")
def vit_case(vit_b_16: nn.Module) -> dict[str, Any]:
    """Grad-CAM top-5 of vit_b_16 at the issue's layer (backward calls counted) and its hand reference."""
    x = _image(1)
    counting = _Counting()
    exp = counting.explain(vit_b_16, x, method="gradcam", layer=VIT_LAYER, targets="top5")
    assert exp.targets is not None
    tokens, grads = _hand_layer_and_grads(vit_b_16, x, vit_b_16.get_submodule(VIT_LAYER), exp.targets)
    assert tokens.shape == (1, 197, 768)
    expected = _gradcam(_tokens_to_grid(tokens, 1, 14), [_tokens_to_grid(g, 1, 14) for g in grads])
    return {"x": x, "exp": exp, "expected": expected, "backwards": counting.calls}


def test_vit_b_16_gradcam_equals_the_hand_reference(vit_case: dict[str, Any]) -> None:
    exp, expected = vit_case["exp"], vit_case["expected"]
    assert exp.layer == VIT_LAYER and exp.raw.shape == (1, 5, 14, 14)
    assert vit_case["backwards"] == [True]  # all five targets in one batched backward
    scale = float(expected.abs().max())
    assert scale > 1e-6  # a map, not zeros
    assert _max_diff(exp.raw, expected) <= 1e-5 * max(1.0, scale)


def test_vit_b_16_automatic_layer_and_the_reshape_recipe(vit_b_16: nn.Module, vit_case: dict[str, Any]) -> None:
    x, exp = vit_case["x"], vit_case["exp"]
    assert str(find_layer(vit_b_16, x)) == VIT_LAYER  # not conv_proj, the patch embedding

    def reshape_transform(t: torch.Tensor, height: int = 14, width: int = 14) -> torch.Tensor:
        result = t[:, 1:, :].reshape(t.size(0), height, width, t.size(2))  # pytorch-grad-cam's vit_example.py
        return result.transpose(2, 3).transpose(1, 2)

    explicit = camlens.explain(vit_b_16, x, layer=VIT_LAYER, targets=exp.targets, reshape=reshape_transform)
    assert torch.equal(explicit.raw, exp.raw)


@pytest.fixture(scope="module")
def swin_case(swin_t: nn.Module) -> dict[str, Any]:
    x = _image(1, seed=4)
    ids = torch.tensor([[5, 900]])
    exp = camlens.explain(swin_t, x, method="gradcam", layer="features.7", targets=ids)
    nhwc, grads = _hand_layer_and_grads(swin_t, x, swin_t.features[7], ids)
    assert nhwc.shape == (1, 7, 7, 768)  # channels-last
    expected = _gradcam(nhwc.permute(0, 3, 1, 2), [g.permute(0, 3, 1, 2) for g in grads])
    return {"x": x, "exp": exp, "expected": expected}


def test_swin_t_gradcam_equals_the_hand_reference_after_the_permute(swin_case: dict[str, Any]) -> None:
    exp, expected = swin_case["exp"], swin_case["expected"]
    assert exp.raw.shape == (1, 2, 7, 7)
    assert _max_diff(exp.raw, expected) <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_cam_on_swin_t_passes_its_head_check_and_is_grad_cam_times_hw(
    swin_t: nn.Module, swin_case: dict[str, Any]
) -> None:
    # swin_t ends in norm -> permute -> global average pooling -> linear: CAM's head applies at ``norm``
    x = swin_case["x"]
    assert str(find_layer(swin_t, x)) == "norm"  # the final norm's (B, 7, 7, 768), not the Permute after it
    cam = camlens.explain(swin_t, x, method="cam", targets=[[5, 900]])
    grad = camlens.explain(swin_t, x, method="gradcam", targets=[[5, 900]])
    assert cam.layer == grad.layer == "norm" and cam.raw.shape == (1, 2, 7, 7)
    assert _max_diff(cam.raw, 49 * grad.raw) <= 1e-4 * float(cam.raw.abs().max())


def _their_normalisation(raw: torch.Tensor, size: tuple[int, int]) -> Any:
    import numpy as np
    from pytorch_grad_cam.utils.image import scale_cam_image

    cam = raw.double().numpy()
    return scale_cam_image(np.maximum(scale_cam_image(np.maximum(cam, 0), size[::-1]), 0))


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t"])
def test_agrees_with_pytorch_grad_cam_and_its_reshape_transform(arch: str, request: pytest.FixtureRequest) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = request.getfixturevalue(arch)
    case = request.getfixturevalue("vit_case" if arch == "vit_b_16" else "swin_case")
    if arch == "vit_b_16":
        layer = model.encoder.layers[-1].ln_1

        def reshape(t: torch.Tensor) -> torch.Tensor:  # pytorch-grad-cam's vit_example.py
            result = t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2))
            return result.transpose(2, 3).transpose(1, 2)
    else:
        layer = model.features[-1]

        def reshape(t: torch.Tensor) -> torch.Tensor:  # torchvision's Swin is (B, h, w, C)
            return t.permute(0, 3, 1, 2)

    exp = case["exp"]
    first = int(exp.targets[0, 0])
    with pgc.GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        theirs = cam(input_tensor=case["x"], targets=[ClassifierOutputTarget(first)])
    err = float(abs(_their_normalisation(exp.raw[:, 0], (224, 224)) - theirs).max())
    assert err < 1e-5, err


# ---------------------------------------------------------------- a small ViT written here (fast, every method)


class TinyViT(nn.Module):
    """A torchvision-style ViT in miniature: patch conv, class token, two pre-norm blocks, head on the class token.

    It states its grid as torchvision's does (``class_token``, ``patch_size``); ``states_grid=False``
    removes both names, as a model camlens knows nothing about.
    """

    def __init__(self, dim: int = 12, classes: int = 6, patch: int = 4, states_grid: bool = True, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)
        cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        if states_grid:
            self.class_token, self.patch_size = cls, patch
        else:
            self.cls = cls
        self.blocks = nn.Sequential(*[_Block(dim) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.class_token if hasattr(self, "class_token") else self.cls
        t = torch.cat([cls.expand(len(t), -1, -1), t], 1)
        return self.head(self.norm(self.blocks(t))[:, 0])


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def _tiny_grid(model: TinyViT, x: torch.Tensor, layer: str) -> torch.Tensor:
    kept: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, out: kept.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return _tokens_to_grid(kept[0], 1, 4)


def test_tiny_vit_layer_grid_and_gradcam() -> None:
    model, x = TinyViT(), _image(2, size=16)
    assert token_grid(model, x.shape[-2:]) == (1, (4, 4))
    assert str(find_layer(model, x)) == "blocks.1.norm1"  # the last block's first norm, not attn / norm
    exp = camlens.explain(model, x, targets=[[0, 5], [2, 3]])
    tokens, grads = _hand_layer_and_grads(model, x, model.blocks[1].norm1, exp.targets)
    expected = _gradcam(_tokens_to_grid(tokens, 1, 4), [_tokens_to_grid(g, 1, 4) for g in grads])
    assert exp.layer == "blocks.1.norm1" and exp.raw.shape == (2, 2, 4, 4)
    assert _max_diff(exp.raw, expected) <= 1e-6


def test_tiny_vit_ablation_cam_replays_tokens_exactly() -> None:
    """w_k = (y - y^k) / y with channel k of the grid zeroed (the class token kept), by hand."""
    model, x = TinyViT(seed=1), _image(2, size=16, seed=8)
    layer, ids = "blocks.1.norm1", torch.tensor([[1], [4]])
    exp = camlens.explain(model, x, method="ablationcam", layer=layer, targets=ids)
    a = _tiny_grid(model, x, layer)
    with torch.no_grad():
        y = model(x).gather(1, ids)[:, 0]
        expected = torch.zeros(2, 4, 4)
        for k in range(a.shape[1]):

            def ablate(m: nn.Module, args: Any, out: torch.Tensor, k: int = k) -> torch.Tensor:
                out = out.clone()
                out[:, 1:, k] = 0
                return out

            handle = model.get_submodule(layer).register_forward_hook(ablate)
            try:
                yk = model(x).gather(1, ids)[:, 0]
            finally:
                handle.remove()
            expected += ((y - yk) / y)[:, None, None] * a[:, k]
    assert _max_diff(exp.raw[:, 0], expected) <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_tiny_vit_eigen_cam_is_the_first_component_of_the_grid() -> None:
    model, x = TinyViT(), _image(1, size=16)
    exp = camlens.explain(model, x, method="eigencam", layer="blocks.1.norm1", targets=0)
    points = _tiny_grid(model, x, "blocks.1.norm1")[0].flatten(1).T  # (16 positions, 12 channels)
    first = torch.linalg.svd(points, full_matrices=False)[2][0]
    proj = (points @ first).view(4, 4)
    assert min(_max_diff(exp.raw[0, 0], s * proj) for s in (1, -1)) <= 1e-5


@pytest.mark.parametrize("method", ["scorecam", "xgradcam", "gradcam++", "layercam", "hirescam", "guided-gradcam"])
def test_tiny_vit_every_layer_method_reads_the_grid(method: str) -> None:
    model, x = TinyViT(), _image(2, size=16)
    snapshot = _Snapshot(model)
    exp = camlens.explain(model, x, method=method, targets=[[1], [2]])
    snapshot.check()
    assert exp.layer == "blocks.1.norm1" and bool(torch.isfinite(exp.raw).all())
    assert exp.raw.shape == ((2, 1, 16, 16) if method == "guided-gradcam" else (2, 1, 4, 4))


def test_cam_refuses_a_class_token_head() -> None:
    model, x = TinyViT(), _image(1, size=16)
    with pytest.raises(ValueError, match=r"CAM needs .*gradcam"):
        camlens.explain(model, x, method="cam", targets=0)


# ---------------------------------------------------------------- layouts that are not a grid: errors, never maps


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "eigencam"])
def test_a_model_stating_no_grid_needs_reshape(method: str) -> None:
    model, x = TinyViT(states_grid=False), _image(2, size=16)
    before = _hooks(model)
    with pytest.raises(ValueError, match=r"states no patch grid.*reshape=.*1 prefix token\(s\) and a 4x4 grid") as err:
        camlens.explain(model, x, method=method, layer="blocks.1.norm1", targets=0)
    assert "t[:, 1:].unflatten(1, (4, 4))" in str(err.value)  # 17 = 1 + 4x4 (and 16 + 1 = 4x4 + 1) named
    assert _hooks(model) == before
    # the suggested callable works, and equals the map of the same network stating its grid
    reshape = lambda t: t[:, 1:].unflatten(1, (4, 4)).permute(0, 3, 1, 2)  # noqa: E731
    given = camlens.explain(model, x, method=method, layer="blocks.1.norm1", targets=0, reshape=reshape)
    stated = camlens.explain(TinyViT(), x, method=method, layer="blocks.1.norm1", targets=0)
    assert torch.allclose(given.raw, stated.raw, rtol=1e-5, atol=1e-7)


def test_a_non_square_input_without_a_stated_grid_suggests_a_template() -> None:
    model = TinyViT(states_grid=False)
    with pytest.raises(ValueError, match=r"P prefix tokens and an h x w grid.*unflatten\(1, \(h, w\)\)"):
        camlens.explain(model, _image(1, size=16)[..., :12], layer="blocks.1.norm1")


def test_a_reshape_that_does_more_than_rearrange_is_refused() -> None:
    model, x = TinyViT(states_grid=False), _image(1, size=16)

    def blurred(t: torch.Tensor) -> torch.Tensor:
        grid = t[:, 1:].unflatten(1, (4, 4)).permute(0, 3, 1, 2)
        return F.avg_pool2d(grid, 3, 1, 1)

    with pytest.raises(ValueError, match=r"reshape= must only rearrange"):
        camlens.explain(model, x, layer="blocks.1.norm1", reshape=blurred)
    with pytest.raises(ValueError, match=r"reshape= must turn .* into \(batch, channels, height, width\)"):
        camlens.explain(model, x, layer="blocks.1.norm1", reshape=lambda t: t[:, 1:])
    with pytest.raises(TypeError, match=r"reshape must be a callable"):
        camlens.explain(model, x, layer="blocks.1.norm1", reshape="tokens")


class _TwoTokens(TinyViT):
    """TinyViT whose head reads a (B, 2, C) slice (class token and one patch) through a module."""

    def __init__(self) -> None:
        super().__init__()
        self.two = _FirstTwo()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        t = self.blocks(torch.cat([self.class_token.expand(len(t), -1, -1), t], 1))
        return self.head(self.norm(self.two(t)).mean(1))


class _FirstTwo(nn.Module):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, :2]


def test_a_stated_grid_with_a_different_token_count() -> None:
    model = _TwoTokens()
    with pytest.raises(ValueError, match=r"2 tokens, but the model states 1 prefix token\(s\) and a 4x4 patch grid"):
        camlens.explain(model, _image(1, size=16), layer="two", targets=0)
    assert all(not m._forward_hooks for m in model.modules())


class _Attention(nn.Module):
    """(B, N, C) -> (B, heads, N, d) -> (B, N, C): a module returning attention's per-head layout."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.split = nn.Identity()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.split(t.unflatten(2, (2, -1)).transpose(1, 2)).transpose(1, 2).flatten(2)


class _WithHeads(TinyViT):
    def __init__(self) -> None:
        super().__init__()
        self.heads = _Attention(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        t = self.blocks(self.heads(torch.cat([self.class_token.expand(len(t), -1, -1), t], 1)))
        return self.head(self.norm(t)[:, 0])


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_a_tensor_inside_attention_is_an_error_not_a_map(method: str) -> None:
    # the case: timm's vit_tiny picked blocks.11.attn.k_norm (3x197x64) and gave striped noise
    model, x = _WithHeads(), _image(1, size=16)
    assert str(find_layer(model, x)) == "blocks.1.norm1"
    with pytest.raises(ValueError, match=r"\(1, 2, 17, 6\), a tensor inside attention"):
        camlens.explain(model, x, method=method, layer="heads.split", targets=0)
    assert all(not m._forward_hooks for m in model.modules())


def test_channels_last_whose_width_is_also_dimension_1_is_ambiguous() -> None:
    class Square(nn.Module):  # (B, 5, 5, 5) out of a LayerNorm(5): (B, C, h, w) or (B, h, w, C)?
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(5)
            self.fc = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.norm(x[:, :1].expand(-1, 5, -1, -1)).mean((1, 2)))

    model = Square().eval()
    with pytest.raises(ValueError, match=r"ambiguous; pass reshape="):
        camlens.explain(model, _image(1, size=5), layer="norm", targets=0)
    exp = camlens.explain(model, _image(1, size=5), layer="norm", targets=0, reshape=lambda t: t.permute(0, 3, 1, 2))
    assert exp.raw.shape == (1, 1, 5, 5)


def test_hooks_and_state_after_an_error_in_the_tail() -> None:
    model, x = TinyViT(), _image(2, size=16)
    snapshot = _Snapshot(model)

    def failing(out: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    for method in ("gradcam", "ablationcam", "scorecam"):
        with pytest.raises(RuntimeError, match="target failed"):
            camlens.explain(model, x, method=method, targets=failing)
        snapshot.check()


# ------------------------------------------------------------- timm: ViT, DeiT, registers, Swin, ConvNeXt, EfficientNet

TIMM = [
    # name, automatic layer, grid (h, w), what it is
    ("vit_tiny_patch16_224", "blocks.11.norm1", (14, 14), "1 class token"),
    ("deit_tiny_distilled_patch16_224", "blocks.11.norm1", (14, 14), "class + distillation token"),
    ("swin_tiny_patch4_window7_224", "norm", (7, 7), "channels-last (B, 7, 7, 768)"),
    ("convnext_atto", "norm_pre", (7, 7), "(B, C, h, w); norm_pre is an Identity returning stages.3's tensor"),
    ("efficientnet_b0", "bn2", (7, 7), "a CNN"),
]


@pytest.mark.parametrize(("name", "layer", "grid", "what"), TIMM, ids=[t[0] for t in TIMM])
def test_timm_models(name: str, layer: str, grid: tuple[int, int], what: str) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False).eval()
    x = _image(1, seed=9)
    snapshot = _Snapshot(model)
    counting = _Counting()
    exp = counting.explain(model, x, targets="top5")
    snapshot.check()
    assert exp.layer == layer, what
    assert exp.raw.shape == (1, 5, *grid)
    assert counting.calls == [True]  # five targets, one batched backward
    # the map is Grad-CAM of the grid, by hand
    module = model.get_submodule(layer)
    out, grads = _hand_layer_and_grads(model, x, module, exp.targets)
    prefix = getattr(model, "num_prefix_tokens", 0)
    if out.dim() == 3:
        view: Callable[[torch.Tensor], torch.Tensor] = lambda t: _tokens_to_grid(t, prefix, grid[0])  # noqa: E731
    elif out.shape[-1] != out.shape[1] and out.shape[1:3] == grid:
        view = lambda t: t.permute(0, 3, 1, 2)  # noqa: E731
    else:
        view = lambda t: t  # noqa: E731
    expected = _gradcam(view(out), [view(g) for g in grads])
    assert _max_diff(exp.raw, expected) <= 1e-5 * max(1.0, float(expected.abs().max()))


def test_timm_vit_with_register_tokens() -> None:
    timm = pytest.importorskip("timm")
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, reg_tokens=4, num_classes=5
    )
    model.eval()
    x = _image(2, size=32)
    assert model.num_prefix_tokens == 5 and token_grid(model, x.shape[-2:]) == (5, (4, 4))
    exp = camlens.explain(model, x, targets=[[1], [3]])
    assert exp.layer == "blocks.1.norm1" and exp.raw.shape == (2, 1, 4, 4)
    out, grads = _hand_layer_and_grads(model, x, model.blocks[1].norm1, exp.targets)
    expected = _gradcam(_tokens_to_grid(out, 5, 4), [_tokens_to_grid(g, 5, 4) for g in grads])
    assert _max_diff(exp.raw, expected) <= 1e-6
    del timm


def test_timm_vit_attention_internals_are_refused() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    with pytest.raises(ValueError, match=r"\(1, 3, 197, 64\), a tensor inside attention"):
        camlens.explain(model, _image(1), layer="blocks.11.attn.k_norm", targets=0)
    assert all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- camlens layers


def test_layers_command_marks_the_transformer_layer(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    class Bundle:
        model = TinyViT()
        size = 16

    monkeypatch.setattr(cli, "_bundle", lambda args, spec: Bundle())
    assert cli.main(["layers", "tiny"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["blocks.1.norm1"].split() == ["blocks.1.norm1", "12x4x4", "(tokens", "17x12)", "<-", "default"]
    assert lines["proj"].split() == ["proj", "12x4x4"]  # the patch embedding is a grid, not the default
    assert "blocks.1.attn" not in lines  # returns a tuple
    assert sum("<- default" in line for line in lines.values()) == 1


def test_layers_command_on_swin(monkeypatch: pytest.MonkeyPatch, capsys, swin_t: nn.Module) -> None:
    class Bundle:
        model = swin_t
        size = 224

    monkeypatch.setattr(cli, "_bundle", lambda args, spec: Bundle())
    assert cli.main(["layers", "swin"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["norm"].endswith("768x7x7  (channels-last 7x7x768)  <- default")
    assert lines["features.7"].endswith("768x7x7  (channels-last 7x7x768)")
    assert lines["permute"].split()[1] == "768x7x7"
