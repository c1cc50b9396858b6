"""camlens.gap: the CAM paper's GAP conversion (Zhou et al. 2016, sec. 3), fine-tuning and checkpoints."""

from __future__ import annotations

import copy
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import camlens
import camlens.geometry
from camlens import gap
from tests import nets

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

    # no source: the file embeds the pickled module, so loading it needs trust
    assert gap.checkpoint_needs_trust(tmp_path / "ck.pt")
    with pytest.raises(ValueError, match="embeds a pickled module"):
        gap.load_checkpoint(tmp_path / "ck.pt")
    loaded = gap.load_checkpoint(tmp_path / "ck.pt", trust=True)
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
    assert gap.is_checkpoint(state) and not gap.checkpoint_needs_trust(path) and not gap.checkpoint_needs_trust(state)
    loaded = gap.load_checkpoint(path)  # no trust needed
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_checkpoint_loads_through_the_model_loader_and_a_given_builder(tmp_path: Path) -> None:
    """zoo.load_model reads a checkpoint like any model file, rebuilding the backbone with its own loader."""
    from camlens import zoo

    resnet = torchvision.models.resnet18(weights=None)
    net = gap.convert(resnet, num_classes=3, channels=8, input_size=(3, 32, 32), source="torchvision:resnet18")
    path = tmp_path / "src.pt"
    gap.save_checkpoint(net, path)
    x = torch.randn(1, 3, 32, 32)
    bundle = zoo.load_model(str(path))  # no trust needed: the same rule as gap.load_checkpoint
    calls: list[tuple[str, bool]] = []

    def build(source: str, trust: bool) -> nn.Module:
        calls.append((source, trust))
        return torchvision.models.resnet18(weights=None)

    given = gap.load_checkpoint(path, build_source=build)
    assert calls == [("torchvision:resnet18", False)]
    with torch.no_grad():
        assert torch.equal(bundle.model(x), net(x)) and torch.equal(given(x), net(x))
    assert bundle.size == 32


def test_gap_and_data_never_import_the_model_zoo() -> None:
    """One import direction: camlens.zoo imports camlens.gap and camlens.data, never the reverse."""
    import subprocess
    import sys

    code = "import sys, camlens.gap, camlens.data, camlens.datasets; print('camlens.zoo' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


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
        assert box is not None and camlens.geometry.iou(box, (c, r, c + 4, r + 4)) > 0.3, (i, box, (c, r))


def test_converted_copy_is_independent_of_the_original() -> None:
    model = _Functional()
    original = copy.deepcopy(model)
    net = gap.convert(model, channels=None, freeze=False, input_size=(3, 8, 8))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for (k, v), (_, w) in zip(model.state_dict().items(), original.state_dict().items()):
        assert torch.equal(v, w), k


# --- untrusted checkpoints --------------------------------------------------------------------------------


class _TouchOnUnpickle:
    """Unpickling this object calls ``marker.touch()``: a stand-in for code a hostile file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_checkpoint_with_a_pickled_module_is_refused_before_anything_is_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    module = io.BytesIO()
    torch.save(_TouchOnUnpickle(marker), module)
    state = {
        "format": "camlens.gap/1",
        "config": {"source": None},
        "state_dict": {},
        "classes": [],
        "history": {},
        "module": module.getvalue(),
    }
    path = tmp_path / "hostile.pt"
    torch.save(state, path)
    assert not marker.exists()

    assert gap.checkpoint_needs_trust(path)
    with pytest.raises(ValueError) as info:
        gap.load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: this GAP checkpoint embeds a pickled module; unpickling runs code from the file. "
        "Load it only if you trust its source: --trust-model-file (CLI) or trust=True"
    )
    assert not marker.exists()  # refused before the module's bytes were unpickled

    # the premise: trusting the file runs its code (Path.touch returns None, which is not a GapNet)
    with pytest.raises(ValueError, match="the saved module is a NoneType, not a GapNet"):
        gap.load_checkpoint(path, trust=True)
    assert marker.exists()


def test_checkpoint_whose_source_is_a_factory_needs_trust(tmp_path: Path) -> None:
    """A source other than torchvision:NAME or a built-in names code to import (or a file to load)."""
    net = gap.convert(nets.FcNet(), channels=4, input_size=(3, 8, 8), source="tests.nets:FcNet", seed=0)
    path = tmp_path / "factory.pt"
    gap.save_checkpoint(net, path)
    assert "module" not in torch.load(path, weights_only=True)
    assert gap.checkpoint_needs_trust(path)
    with pytest.raises(ValueError, match=r"rebuilds its backbone from 'tests\.nets:FcNet'.*trust=True"):
        gap.load_checkpoint(path)
    # factories are imported in one place, the zoo: gap alone says where to go
    with pytest.raises(ValueError, match=r"only camlens\.zoo can build"):
        gap.load_checkpoint(path, trust=True)
    from camlens import zoo

    loaded = zoo.load_model(str(path), trust=True).model
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_is_checkpoint_and_newer_formats(tmp_path: Path) -> None:
    assert gap.is_checkpoint({"format": "camlens.gap/1"})
    assert not gap.is_checkpoint({"format": "something/1"})
    assert not gap.is_checkpoint({"weights": torch.zeros(1)})
    assert not gap.is_checkpoint(torch.zeros(1))
    assert not gap.is_checkpoint(None)
    torch.save({"format": "camlens.gap/2", "config": {}, "state_dict": {}}, tmp_path / "new.pt")
    assert gap.is_checkpoint(torch.load(tmp_path / "new.pt", weights_only=True))
    with pytest.raises(ValueError, match=re.escape("'camlens.gap/2' checkpoint; this camlens reads 'camlens.gap/1'")):
        gap.load_checkpoint(tmp_path / "new.pt")
    with pytest.raises(ValueError, match="not a camlens GAP checkpoint"):
        gap.checkpoint_needs_trust({"weights": torch.zeros(1)})


# --- argument ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": math.nan}, "lr must be a finite number > 0, got nan; try 0.01 for SGD, 0.001 for Adam"),
        ({"lr": math.inf}, "lr must be a finite number > 0, got inf; try 0.01 for SGD, 0.001 for Adam"),
        ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0; try 0.01 for SGD, 0.001 for Adam"),
        ({"lr": -0.1}, "lr must be a finite number > 0, got -0.1; try 0.01 for SGD, 0.001 for Adam"),
        ({"lr": "0.1"}, "lr must be a finite number > 0, got '0.1'; try 0.01 for SGD, 0.001 for Adam"),
        ({"lr": 1e300}, "lr 1e+300 is over the largest torch.float32 of the network's weights; try 0.01 for SGD"),
        ({"epochs": 0}, "epochs must be an int >= 1 (passes over the training split), got 0"),
        ({"epochs": 1.5}, "epochs must be an int >= 1 (passes over the training split), got 1.5"),
        ({"batch_size": 0}, "batch_size must be an int >= 1 (images per step), got 0"),
        ({"val_fraction": 1.0}, "val_fraction must be in [0, 1) (the share held out; 0 for none), got 1.0"),
        ({"val_fraction": -0.1}, "val_fraction must be in [0, 1) (the share held out; 0 for none), got -0.1"),
        ({"val_fraction": math.nan}, "val_fraction must be in [0, 1) (the share held out; 0 for none), got nan"),
        ({"train_blocks": -2}, "train_blocks must be an int >= -1 (-1: the whole backbone, 0: the head only), got -2"),
        ({"train_blocks": 2}, "train_blocks must be -1 (all) or 0..1 (the backbone has 1 block), got 2"),
        ({"image_size": 0}, "image_size must be an int >= 1 (pixels of the square training input) or None, got 0"),
        ({"weight_decay": math.nan}, "weight_decay must be a finite number >= 0, got nan"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be 3 finite numbers (R, G, B), all > 0, got (0.2, 0.0, 0.2)"),
    ],
)
def test_finetune_checks_its_arguments_before_reading_data(tmp_path: Path, kwargs: dict, message: str) -> None:
    net = gap.convert(_Functional(), channels=4, input_size=(3, 8, 8), seed=0)  # 1 block: a, b (no pooling between)
    with pytest.raises(ValueError) as info:
        # the data folder does not exist: the argument is refused before anything is read
        gap.finetune(net, tmp_path / "nowhere", checkpoint=tmp_path / "ck.pt", progress=False, **kwargs)
    assert str(info.value) == message
    assert not (tmp_path / "ck.pt").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 0}, "channels must be an int >= 1, or None for no extra conv (CLI: --channels 0), got 0"),
        ({"channels": -3}, "channels must be an int >= 1, or None for no extra conv (CLI: --channels 0), got -3"),
        ({"num_classes": 0}, "num_classes must be an int >= 1"),
        ({"num_classes": True}, "num_classes must be an int >= 1"),
    ],
)
def test_convert_checks_its_ranges(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        gap.convert(_Functional(), input_size=(3, 8, 8), **kwargs)


# --- non-finite training -------------------------------------------------------------------------------------


def _tiny_data(n: int = 4) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 3)


def test_lr_nan_writes_no_checkpoint(tmp_path: Path) -> None:
    net = gap.convert(_Functional(), channels=4, input_size=(3, 8, 8), seed=0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got nan"):
        gap.finetune(net, _tiny_data(), lr=math.nan, checkpoint=tmp_path / "ck.pt", progress=False)
    assert not (tmp_path / "ck.pt").exists()


class _NanFromEpoch2(torch.utils.data.Dataset):
    """The images of ``base`` for the first ``len(base)`` reads (epoch 1), then all-nan images (epoch 2).

    On its first nan read it keeps the checkpoint's bytes as epoch 1 left them.
    """

    def __init__(self, base: torch.utils.data.TensorDataset, checkpoint: Path) -> None:
        self.base, self.checkpoint, self.reads = base, checkpoint, 0
        self.after_epoch1: bytes | None = None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        x, y = self.base[i]
        if self.reads <= len(self.base):
            return x, y
        if self.after_epoch1 is None:
            self.after_epoch1 = self.checkpoint.read_bytes()
        return torch.full_like(x, math.nan), y


def test_loss_blowing_up_at_epoch_2_keeps_the_epoch_1_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ck.pt"
    data = _NanFromEpoch2(_tiny_data(4), ckpt)
    net = gap.convert(_Functional(), channels=4, input_size=(3, 8, 8), seed=0)
    with pytest.raises(ValueError) as info:
        gap.finetune(net, data, epochs=3, lr=0.01, batch_size=2, val_fraction=0.0, checkpoint=ckpt, progress=False)
    # epoch 2's first batch is nan images, so its loss is nan: the run stops there, before a step
    assert str(info.value) == "training loss became nan at epoch 2, batch 1; lower --lr (now 0.01)"
    assert data.after_epoch1 is not None and ckpt.read_bytes() == data.after_epoch1
    loaded = gap.load_checkpoint(ckpt, trust=True)
    assert all(torch.isfinite(v).all() for v in loaded.state_dict().values() if v.is_floating_point())


def test_weights_made_infinite_by_the_last_step_are_not_saved(tmp_path: Path) -> None:
    """lr=3e38 (just under float32's 3.4e38) on two images of constant 1e4: the one step's loss is finite
    (the initial weights), but fc.weight's gradient is mean_i (softmax_i - onehot_i) x pooled features;
    the features are about 100 for this input (~1 for inputs of 100, the net is piecewise linear), so the
    gradient is about (1/3 - 1/2) x 100, and lr x gradient overflows float32: fc.weight becomes infinite.
    No training loss follows that step (one batch, one epoch, no validation): only the weight check sees it."""
    data = torch.utils.data.TensorDataset(torch.full((2, 3, 8, 8), 1e4), torch.tensor([0, 1]))
    net = gap.convert(_Functional(), channels=4, input_size=(3, 8, 8), seed=0)
    with pytest.raises(ValueError) as info:
        gap.finetune(
            net, data, epochs=1, lr=3e38, batch_size=2, val_fraction=0.0, checkpoint=tmp_path / "ck.pt", progress=False
        )
    assert str(info.value) == "training weights became non-finite at epoch 1, batch 1; lower --lr (now 3e+38)"
    assert not torch.isfinite(net.fc.weight).all()
    assert not (tmp_path / "ck.pt").exists()


def test_run_epoch_refuses_a_nan_loss_before_stepping() -> None:
    model = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.ones(1, 2), torch.tensor([0])), (torch.full((1, 2), math.nan), torch.tensor([1]))]
    with pytest.raises(ValueError, match="training loss became nan at batch 2"):
        gap.run_epoch(model, batches, opt, progress=False)
    # batch 1 stepped, batch 2 did not: the weights are finite
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not torch.equal(model.weight, before["weight"])


# --- unreadable images ---------------------------------------------------------------------------------------


def test_corrupt_image_stops_before_training_naming_the_file(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "train")
    (data / "dog" / "bad.png").write_bytes(b"this is not a PNG file")
    net = gap.convert(_Functional(), num_classes=2, channels=4, input_size=(3, 8, 8), seed=0)
    with pytest.raises(ValueError) as info:
        gap.finetune(net, data, epochs=1, checkpoint=tmp_path / "ck.pt", progress=False)
    assert str(info.value) == f"{data / 'dog' / 'bad.png'}: not an image file PIL can read"
    assert not (tmp_path / "ck.pt").exists()


def test_truncated_image_stops_training_naming_the_file(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "train")
    whole = (data / "cat" / "0.png").read_bytes()
    (data / "cat" / "0.png").write_bytes(whole[: len(whole) // 2])  # header intact, pixel data cut
    net = gap.convert(_Functional(), num_classes=2, channels=4, input_size=(3, 8, 8), seed=0)
    with pytest.raises(ValueError, match=re.escape(f"{data / 'cat' / '0.png'}: unreadable or truncated image")):
        gap.finetune(net, data, epochs=1, checkpoint=tmp_path / "ck.pt", progress=False)
    assert not (tmp_path / "ck.pt").exists()


def test_image_over_the_pixel_budget_stops_before_training(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "train")  # 24 x 20 images: 480 pixels
    net = gap.convert(_Functional(), num_classes=2, channels=4, input_size=(3, 8, 8), seed=0)
    with pytest.raises(ValueError) as info:
        gap.finetune(net, data, epochs=1, max_pixels=479, progress=False)
    assert str(info.value).startswith(f"{data / 'cat' / '0.png'}: 24 x 20 = 480 pixels is over the budget of 479")
    gap.finetune(net, data, epochs=1, max_pixels=480, progress=False)  # at the budget: fine
