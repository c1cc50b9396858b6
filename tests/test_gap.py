"""camlens.gap: the CAM paper's GAP conversion (Zhou et al. 2016, sec. 3), fine-tuning and checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import camlens
from camlens import gap

torchvision = pytest.importorskip("torchvision")


pytestmark = pytest.mark.usefixtures("one_thread")


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[bool], list[bool]]:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def _assert_unchanged(model: nn.Module, snap: tuple[dict[str, torch.Tensor], list[bool], list[bool]]) -> None:
    state, grads, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed"
    assert [p.requires_grad for p in model.parameters()] == grads
    assert [m.training for m in model.modules()] == modes


def _shares_storage(a: nn.Module, b: nn.Module) -> bool:
    ptrs = {t.data_ptr() for t in a.state_dict().values() if t.numel()}
    return any(t.data_ptr() in ptrs for t in b.state_dict().values() if t.numel())


def _hand_cam(net: gap.GapNet, x: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """CAM paper eq. 2: M_c(x, y) = sum_k w_k^c f_k(x, y), f = the new conv's ReLU'd output."""
    with torch.no_grad():
        f = net.extra(net.features(x))  # (B, K, h, w)
        w = net.fc.weight[ids]  # (B, K) rows of the classes asked for
        return torch.einsum("bk,bkhw->bhw", w, f)[:, None]


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_vgg11_conversion_drops_pool5_and_cam_is_the_papers_formula(pooling: str) -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg11(weights=None)
    vgg.train()  # a model in training mode: convert must not touch its batch statistics or mode
    snap = _snapshot(vgg)
    net = gap.convert(vgg, num_classes=7, pooling=pooling, channels=16, input_size=(3, 64, 64), seed=0)
    _assert_unchanged(vgg, snap)
    assert not _shares_storage(vgg, net)
    # VGG11 has 5 max pools; pool5 is dropped, so 64 / 2**4 = 4: the paper's 14x14 for 224 inputs
    assert net.config["cut"] == "vgg" and net.config["feature_size"] == [4, 4]
    assert not isinstance(list(net.features.children())[-1], nn.MaxPool2d)
    assert isinstance(net.pool, nn.AdaptiveAvgPool2d if pooling == "avg" else nn.AdaptiveMaxPool2d)
    assert net.extra.conv.kernel_size == (3, 3) and net.extra.conv.padding == (1, 1) and net.extra.conv.stride == (1, 1)
    assert net.fc.in_features == 16 and net.fc.out_features == 7
    # the backbone is frozen by default, the head is not
    assert not any(p.requires_grad for p in net.features.parameters())
    assert len(net.blocks()) == 5  # VGG11's five conv stages, split at the max pools
    assert all(p.requires_grad for p in net.head_parameters())
    assert not net.training

    x = torch.randn(2, 3, 64, 64)
    out = net(x)
    assert out.shape == (2, 7)
    # the forward is exactly fc(pool(extra(features(x)))): S_c = sum_k w_k^c pool(f_k) + b_c (eq. 1)
    f = net.extra(net.features(x))
    pooled = f.mean((2, 3)) if pooling == "avg" else f.amax((2, 3))
    torch.testing.assert_close(out, pooled @ net.fc.weight.T + net.fc.bias)

    method = camlens.CAM(net)
    exp = method(x, targets=[3, 5])
    assert exp.layer == "extra" and method.pooling == pooling
    torch.testing.assert_close(exp.raw, _hand_cam(net, x, [3, 5]))


def test_resnet18_conversion_keeps_the_children_before_avgpool() -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    snap = _snapshot(resnet)
    net = gap.convert(resnet, num_classes=None, channels=8, input_size=(3, 64, 64), seed=0)
    _assert_unchanged(resnet, snap)
    assert net.config["cut"] == "resnet"
    assert [n for n, _ in net.features.named_children()][-1] == "layer4"
    assert net.fc.out_features == 1000  # num_classes=None: as many as the original outputs
    x = torch.randn(2, 3, 64, 64)
    # the backbone computes exactly the original's layer4 output
    seen = []
    handle = resnet.layer4.register_forward_hook(lambda m, a, o: seen.append(o))
    try:
        with torch.no_grad():
            resnet(x)
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(net.features(x), seen[0], rtol=0, atol=0)
    assert net(x).shape == (2, 1000)
    exp = camlens.explain(net, x, method="cam", targets=[10, 999])
    torch.testing.assert_close(exp.raw, _hand_cam(net, x, [10, 999]))


def test_resnet18_without_extra_conv_is_its_own_gap_network() -> None:
    """channels=None pools layer4 directly: the ResNet is already a GAP network; only fc is new."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    net = gap.convert(resnet, num_classes=4, channels=None, input_size=(3, 64, 64), seed=1)
    assert isinstance(net.extra, nn.Identity) and net.fc.in_features == 512
    x = torch.randn(1, 3, 64, 64)
    exp = camlens.explain(net, x, method="cam", targets=2)
    assert exp.layer == "extra"  # the Identity returns layer4's tensor, and returns it last
    torch.testing.assert_close(exp.raw, _hand_cam(net, x, [2]))


class _Functional(nn.Module):
    """No `.features`, no `avgpool`: a ReLU applied functionally after the last conv, flatten + linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 6, 3)
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).flatten(1))


def test_generic_model_is_cut_by_fx_after_its_last_activation() -> None:
    model = _Functional().eval()
    net = gap.convert(model, channels=None, input_size=(3, 8, 8), seed=0)
    assert net.config["cut"] == "fx" and net.config["cut_at"] == "b"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        # the cut follows `b` through the functional ReLU: features = relu(b(relu(a(x))))
        torch.testing.assert_close(net.features(x), torch.relu(model.b(torch.relu(model.a(x)))))
    assert net(x).shape == (2, 3)


def test_explicit_layer_cut() -> None:
    resnet = torchvision.models.resnet18(weights=None).eval()
    net = gap.convert(resnet, num_classes=5, channels=8, layer="layer3", input_size=(3, 64, 64))
    assert net.config["cut"] == "fx" and net.config["in_channels"] == 256 and net.config["feature_size"] == [4, 4]


def test_convert_rejects_bad_arguments() -> None:
    model = _Functional()
    with pytest.raises(ValueError, match="pooling must be 'avg'"):
        gap.convert(model, pooling="median", input_size=(3, 8, 8))
    with pytest.raises(ValueError, match="channels must be"):
        gap.convert(model, channels=0, input_size=(3, 8, 8))
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        gap.convert("vgg16")  # type: ignore[arg-type]


def _image_folder(root, classes=("cat", "dog"), per_class=4):  # type: ignore[no-untyped-def]
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_finetune_trains_only_the_head_and_the_checkpoint_restores_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _image_folder(tmp_path / "train")
    resnet = torchvision.models.resnet18(weights=None)
    net = gap.convert(resnet, num_classes=2, channels=8, input_size=(3, 32, 32), seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    history = gap.finetune(
        net, data, epochs=1, lr=0.05, batch_size=4, val_fraction=0.25, checkpoint=tmp_path / "ck.pt", progress=False
    )
    assert history["epoch"] == [1] and history["classes"] == ["cat", "dog"]
    assert 0.0 <= history["train_acc"][0] <= 1.0 and 0.0 <= history["val_acc"][0] <= 1.0
    assert history["trainable"] == sum(p.numel() for p in net.head_parameters())
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"extra.conv.weight", "extra.conv.bias", "fc.weight", "fc.bias"}
    assert not net.training

    loaded = gap.load_checkpoint(tmp_path / "ck.pt")
    assert loaded.config["classes"] == ["cat", "dog"]
    # the preprocessing the network was trained with travels with it (ImageNet's by default)
    assert loaded.config["image_size"] == 32 and loaded.config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    for k, v in after.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_finetune_train_blocks_unfreezes_only_the_last_blocks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _image_folder(tmp_path / "train")
    resnet = torchvision.models.resnet18(weights=None)
    net = gap.convert(resnet, num_classes=2, channels=8, input_size=(3, 32, 32), seed=0)
    # ResNet blocks: conv1, bn1, layer1..layer4 (children with parameters)
    assert len(net.blocks()) == 6 and net.blocks()[-1] is net.features.layer4
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gap.finetune(net, data, epochs=1, lr=0.05, batch_size=4, val_fraction=0.0, train_blocks=1, progress=False)
    after = net.state_dict()
    changed = {
        (k.split(".")[1] if k.startswith("features.") else k.split(".")[0])
        for k in before
        if not torch.equal(before[k], after[k])
    }
    assert changed == {"layer4", "extra", "fc"}


def test_checkpoint_with_a_source_holds_only_tensors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    resnet = torchvision.models.resnet18(weights=None)
    net = gap.convert(resnet, num_classes=3, channels=8, input_size=(3, 32, 32), source="torchvision:resnet18")
    path = tmp_path / "src.pt"
    gap.save_checkpoint(net, path)
    state = torch.load(path, weights_only=True)  # no pickled code
    assert "module" not in state and state["config"]["source"] == "torchvision:resnet18"
    loaded = gap.load_checkpoint(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_finetune_and_load_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _image_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=1)
    net = gap.convert(_Functional(), channels=4, input_size=(3, 8, 8))  # 3 classes: fits
    bad = gap.convert(_Functional(), num_classes=2, channels=4, input_size=(3, 8, 8))
    with pytest.raises(ValueError, match="num_classes=3"):
        gap.finetune(bad, data, epochs=1, progress=False)
    with pytest.raises(TypeError, match="GapNet"):
        gap.finetune(_Functional(), data, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="train_blocks"):
        gap.finetune(net, data, train_blocks=5, progress=False)
    with pytest.raises(ValueError, match="no such checkpoint"):
        gap.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a camlens GAP checkpoint"):
        gap.load_checkpoint(tmp_path / "other.pt")


def test_finetune_accepts_a_dataset_and_cam_then_finds_the_object() -> None:
    """A red square is class 0, a blue one class 1, anywhere on the canvas: after training, the box of the
    true class's CAM overlaps the square (the CAM paper's claim in miniature)."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(48, 3, 16, 16)
    y = torch.arange(48) % 2
    corners = torch.randint(0, 12, (48, 2), generator=g)
    for i in range(48):
        r, c = corners[i].tolist()
        x[i, 0 if y[i] == 0 else 2, r : r + 4, c : c + 4] = 1.0
    data = torch.utils.data.TensorDataset(x, y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 2))
    net = gap.convert(model, channels=8, freeze=False, input_size=(3, 16, 16), seed=0)
    history = gap.finetune(
        net, data, epochs=20, lr=0.01, batch_size=8, val_fraction=0.0, train_blocks=-1, optimizer="adam", progress=False
    )
    assert history["train_acc"][-1] == 1.0
    exp = camlens.explain(net, x[:8], method="cam", targets=y[:8])
    for i, per_target in enumerate(exp.boxes(0.5)):
        box = per_target[0]
        r, c = corners[i].tolist()
        assert box is not None and camlens.localize.iou(box, (c, r, c + 4, r + 4)) > 0.3, (i, box, (c, r))


def test_converted_copy_is_independent_of_the_original() -> None:
    model = _Functional()
    original = copy.deepcopy(model)
    net = gap.convert(model, channels=None, freeze=False, input_size=(3, 8, 8))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for (k, v), (_, w) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(v, w), k
