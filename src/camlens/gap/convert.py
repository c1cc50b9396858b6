"""GAP networks: turn an ordinary classifier into one CAM can explain, and fine-tune its new head.

Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, sec. 3 ("Weakly-
supervised Object Localization", setup): for AlexNet, VGGnet and GoogLeNet "we remove the fully-connected
layers before the final output and replace them with GAP followed by a fully-connected softmax layer".
For VGGnet "we removed the layers after conv5-3 (i.e., pool5 to prob), resulting in a mapping
resolution of 14 x 14", then "added a convolutional layer of size 3 x 3, stride 1, pad 1 with 1024
units, followed by a GAP layer and a softmax layer", and fine-tuned the network. The result computes

    S_c = sum_k w_k^c * mean_{x,y} f_k(x, y) + b_c        (their eq. 1, with the GAP of sec. 2)

for the new conv's ReLU'd output f, so CAM's map M_c(x, y) = sum_k w_k^c f_k(x, y) (their eq. 2) applies.
The paper's GMP variant (sec. 3.1, GoogLeNet-GMP) replaces the average by a global max.

:func:`convert` builds a new :class:`GapNet` around a deep copy of the model's convolutional backbone
(the user's model is never touched, and the two never share parameters); :func:`finetune` trains the
new head (and optionally the last backbone blocks) on an image folder or a dataset, with progress bars
and a checkpoint that :func:`load_checkpoint` turns back into the model.

Example:
    >>> net = camlens.gap.convert(torchvision.models.vgg16(), num_classes=20)
    >>> history = camlens.gap.finetune(net, "data/train", epochs=5, checkpoint="vgg16_gap.pt")
    >>> camlens.explain(net, x, method="cam").maps
"""

from __future__ import annotations

import copy
import functools
import io
import math
import numbers
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camlens.capture import find_layer, resolve_layer
from camlens.zoo import BUILTIN, MAX_PIXELS, load_image

__all__ = [
    "GapNet",
    "checkpoint_needs_trust",
    "convert",
    "finetune",
    "is_checkpoint",
    "load_checkpoint",
    "run_epoch",
    "save_checkpoint",
]

_FORMAT = "camlens.gap/1"
_FAMILY = "camlens.gap/"
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class GapNet(nn.Module):
    """features -> extra (3x3 conv + ReLU) -> global average (or max) pooling -> linear.

    The architecture of the CAM paper's "-GAP" networks (sec. 3). ``camlens.explain(net, x, "cam")``
    explains ``extra``'s output (``find_layer`` picks it) with the rows of ``fc``.

    Attributes:
        features: the original model's convolutional backbone (a deep copy), cut after its last
            convolutional block; a ``torch.fx.GraphModule`` for models cut by tracing.
        extra: ``Sequential(Conv2d(in_channels, channels, 3, stride 1, pad 1), ReLU)``, or ``Identity``
            when ``channels`` is ``None``.
        pool: ``AdaptiveAvgPool2d(1)`` (GAP) or ``AdaptiveMaxPool2d(1)`` (GMP).
        fc: ``Linear(channels, num_classes)``.
        config: how the network was built (what :func:`load_checkpoint` needs to rebuild it).
    """

    def __init__(self, features: nn.Module, extra: nn.Module, pool: nn.Module, fc: nn.Linear, config: dict) -> None:
        super().__init__()
        self.features = features
        self.extra = extra
        self.pool = pool
        self.fc = fc
        self.config = dict(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.extra(self.features(x))).flatten(1))

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the new head (``extra`` and ``fc``)."""
        return [*self.extra.parameters(), *self.fc.parameters()]

    def blocks(self) -> list[nn.Module]:
        """The backbone's blocks, first to last, as ``finetune(train_blocks=n)`` counts them.

        A block is a top-level child of ``features`` that has parameters (ResNet's ``layer4``, a
        MobileNet stage); for a flat VGG-style ``Sequential`` of single layers, a block is the run of
        layers between two pooling layers (VGG's conv5_1..conv5_3 is one block).
        """
        children = list(self.features.children())
        flat = sum(1 for m in children if isinstance(m, nn.Conv2d)) > 1
        if flat:
            groups: list[list[nn.Module]] = [[]]
            for child in children:
                if isinstance(child, _POOLS):
                    groups.append([])
                else:
                    groups[-1].append(child)
            stages = [nn.ModuleList(g) for g in groups if any(p.numel() for m in g for p in m.parameters())]
            return list(stages)
        return [m for m in children if any(True for _ in m.parameters())]


def _kind(model: nn.Module) -> str:
    if isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(model, "classifier"):
        return "vgg"
    names = [name for name, _ in model.named_children()]
    if isinstance(getattr(model, "fc", None), nn.Linear) and "avgpool" in names:
        return "resnet"
    return "fx"


def _structural_cut(model: nn.Module, kind: str, drop_last_pool: bool) -> tuple[nn.Module, nn.Module]:
    """(backbone, the module of ``model`` whose output the backbone's output must equal)."""
    if kind == "vgg":
        features = model.features
        assert isinstance(features, nn.Sequential)  # _kind checked it
        layers = list(features.named_children())
        end = len(layers)
        while drop_last_pool and end > 1 and isinstance(layers[end - 1][1], _POOLS):
            end -= 1
        return nn.Sequential(OrderedDict(layers[:end])), layers[end - 1][1]
    children = list(model.named_children())
    end = [name for name, _ in children].index("avgpool")
    return nn.Sequential(OrderedDict(children[:end])), children[end - 1][1]


def _output_of(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The (last) output of ``module`` during ``model(x)``."""
    seen: list[Any] = []
    # cloned: a later in-place op of the model must not change what was seen
    handle = module.register_forward_hook(
        lambda mod, args, out: seen.append(out.clone() if isinstance(out, torch.Tensor) else out)
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    out = seen[-1] if seen else None
    return out if isinstance(out, torch.Tensor) else None


def _fx_cut(model: nn.Module, layer: str, probe: torch.Tensor | None = None) -> nn.Module:
    """The part of ``model`` that computes ``layer``'s output, as a ``torch.fx.GraphModule``.

    The named module is made a leaf of the trace (so a ``Sequential`` or a residual block is one node);
    the graph is cut after its call, extended through shape-keeping ops that follow it (see
    :func:`_through_elementwise`), and dead code (branches only the removed tail used) is dropped.
    """
    import torch.fx as fx

    ref = resolve_layer(model, layer)
    qualname = ref.name

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
            return module_qualified_name == qualname or super().is_leaf_module(m, module_qualified_name)

    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many types for untraceable Python control flow
        raise ValueError(
            f"cannot cut {type(model).__name__} after {ref}: torch.fx cannot trace it ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160]}); pass a model with a `.features` Sequential or ResNet-style "
            "children, or wrap the backbone yourself"
        ) from err
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == qualname]
    if not calls:
        raise ValueError(f"layer {ref} is not called in the traced forward of {type(model).__name__}")
    index = 0 if ref.call is None else ref.call
    if not -len(calls) <= index < len(calls):
        raise ValueError(f"layer {ref} asks for call {index} but the traced forward calls it {len(calls)} times")
    target = calls[index]
    traced = fx.GraphModule(model, graph)
    if probe is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(traced).propagate(probe)
        target = _through_elementwise(target)
    cut = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node.op == "output":
            break
        env[node] = cut.node_copy(node, lambda n: env[n])
        if node is target:
            break
    cut.output(env[target])
    features = fx.GraphModule(model, cut, class_name="Features")
    features.graph.eliminate_dead_code()
    features.recompile()
    return features


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _through_elementwise(node: Any) -> Any:
    """Follow a traced node through the ops that keep its shape (a functional ``F.relu``, a residual
    add) so the cut includes them: a module's output is not yet the feature map the head pools when
    the forward still applies an activation to it. Stops at a fork or a pooling module."""
    shape = _shape(node)
    while shape is not None and len(node.users) == 1:
        (user,) = node.users
        if user.op == "output" or _shape(user) != shape:
            break
        if user.op == "call_module" and "pool" in str(user.target).lower():
            break
        node = user
    return node


def _is_int(value: Any, low: int) -> bool:
    """An integer (not a bool) >= ``low``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= low


def _is_real(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def convert(
    model: nn.Module,
    num_classes: int | None = None,
    pooling: str = "avg",
    channels: int | None = 1024,
    drop_last_pool: bool = True,
    freeze: bool = True,
    *,
    layer: str | None = None,
    input_size: Sequence[int] = (3, 224, 224),
    source: str | None = None,
    seed: int | None = None,
) -> GapNet:
    """A new :class:`GapNet`: ``model``'s conv backbone + 3x3 conv + global pooling + linear (CAM paper, sec. 3).

    The backbone is a ``copy.deepcopy`` of ``model``'s layers up to its last convolutional block; the user's
    model is not modified and shares nothing with the result. How the cut is made:

    * VGG-style (``.features`` Sequential and ``.classifier``: torchvision VGG, AlexNet, MobileNet,
      EfficientNet, ConvNeXt, SqueezeNet): ``features`` without its trailing pooling layers when
      ``drop_last_pool`` (VGG16's pool5 goes, so a 224x224 input gives the paper's 14x14 maps);
    * ResNet-style (``.avgpool`` child and ``.fc`` Linear: ResNet, ResNeXt, RegNet, Wide ResNet): the
      children before ``avgpool``;
    * anything else, or when ``layer`` is given: a ``torch.fx`` trace cut after ``layer`` (default: the
      layer :func:`camlens.find_layer` picks, the last spatial 4-D output that is not a pooling).

    A structural cut is checked against the original: on a probe input of ``input_size`` the backbone
    must return the output of the corresponding layer of the model, otherwise the fx cut is used
    (Inception's auxiliary head, for instance, sits between its children).

    Args:
        model: a CNN classifier returning (B, classes) scores.
        num_classes: classes of the new linear layer (``None``: as many as the model outputs).
        pooling: ``"avg"`` (GAP, the CAM paper's choice) or ``"max"`` (GMP, its sec. 3.1 comparison).
        channels: units of the added 3x3 conv (1024 in the paper); ``None`` adds no conv, pooling the
            backbone's features directly (as GoogLeNet and ResNet already do).
        drop_last_pool: drop the trailing pooling layers of a VGG-style ``features``.
        freeze: set ``requires_grad=False`` on the backbone's parameters (the new head stays trainable).
        layer: cut after this module (a name ``camlens.layer_names(model)`` lists) with torch.fx.
        input_size: (C, H, W) of the probe input used to read the backbone's channels and output size.
        source: how to rebuild ``model`` (a ``camlens.zoo.load_model`` spec such as
            ``"torchvision:vgg16"``); recorded so checkpoints hold only weights.
        seed: seed for the new layers' initialisation (``None``: the global RNG).

    The new conv is initialised as torchvision initialises VGG's convs (He normal, fan-out; bias 0), the
    linear layer with N(0, 0.01) weights and zero bias. The result is in eval mode.

    Example:
        >>> net = convert(torchvision.models.resnet18(), num_classes=10, channels=None)
        >>> net(torch.randn(1, 3, 224, 224)).shape  # (1, 10)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if pooling not in ("avg", "max"):
        raise ValueError(f"pooling must be 'avg' (GAP) or 'max' (GMP), got {pooling!r}")
    if channels is not None and not _is_int(channels, 1):
        raise ValueError(
            f"channels must be an int >= 1, or None for no extra conv (CLI: --channels 0), got {channels!r}"
        )
    if num_classes is not None and not _is_int(num_classes, 1):
        raise ValueError(
            f"num_classes must be an int >= 1 (the classes of the new linear layer), or None for as many as "
            f"the model outputs, got {num_classes!r}"
        )
    if len(input_size) != 3:
        raise ValueError(f"input_size must be (channels, height, width), got {tuple(input_size)}")

    original = copy.deepcopy(model).eval()
    param = next(original.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    probe = torch.zeros(1, *input_size, device=device, dtype=dtype)
    with torch.no_grad():
        out = original(probe)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ValueError("convert needs a classifier returning a (batch, classes) tensor")
    classes = int(out.shape[1]) if num_classes is None else num_classes

    kind = "fx" if layer is not None else _kind(original)
    features: nn.Module | None = None
    if kind != "fx":
        candidate, ref_module = _structural_cut(original, kind, drop_last_pool)
        expected = _output_of(original, ref_module, probe)
        try:
            with torch.no_grad():
                got = candidate(probe)
        except (RuntimeError, TypeError, ValueError):
            got = None
        same = (
            expected is not None
            and got is not None
            and got.dim() == 4
            and got.shape == expected.shape
            # a structural mismatch differs grossly; the tolerance only absorbs nondeterministic kernels
            and torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(expected.abs().max())))
        )
        if same:
            features = candidate
        else:
            kind = "fx"
    cut_at = None
    if features is None:
        cut_at = layer if layer is not None else str(find_layer(original, probe))
        features = _fx_cut(original, cut_at, probe if layer is None else None)
    features.eval()
    with torch.no_grad():
        feats = features(probe)
    if not isinstance(feats, torch.Tensor) or feats.dim() != 4:
        raise ValueError(f"the backbone's output is not a (B, C, h, w) feature map; pick another layer= (got {cut_at})")
    in_channels = int(feats.shape[1])
    if freeze:
        for p in features.parameters():
            p.requires_grad_(False)

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        if channels is None:
            extra: nn.Module = nn.Identity()
            width = in_channels
        else:
            conv = nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)
            extra = nn.Sequential(OrderedDict(conv=conv, relu=nn.ReLU(inplace=True)))
            width = channels
        fc = nn.Linear(width, classes)
        nn.init.normal_(fc.weight, 0.0, 0.01)
        nn.init.zeros_(fc.bias)
    pool: nn.Module = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
    config = {
        "cut": kind,
        "layer": layer,
        "cut_at": cut_at,
        "pooling": pooling,
        "channels": channels,
        "in_channels": in_channels,
        "num_classes": classes,
        "drop_last_pool": drop_last_pool,
        "input_size": [int(s) for s in input_size],
        "feature_size": [int(feats.shape[2]), int(feats.shape[3])],
        "source": source,
    }
    net = GapNet(features, extra, pool, fc, config).to(device=device, dtype=dtype)
    return net.eval()


def _image_folder(
    path: Path, image_size: int, mean: Sequence[float], std: Sequence[float], max_pixels: int | None
) -> Any:
    """An ImageFolder read with camlens' one image loader, every file's header checked up front."""
    from torchvision import datasets, transforms

    if not path.is_dir():
        raise ValueError(f"{path}: no such directory; pass an ImageFolder root (one sub-folder of images per class)")
    tf = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    try:
        # load_image: RGB whatever the mode, pixel budget from the header, a ValueError naming the file
        folder = datasets.ImageFolder(
            str(path), transform=tf, loader=functools.partial(load_image, max_pixels=max_pixels)
        )
    except (FileNotFoundError, RuntimeError) as err:
        raise ValueError(f"{path}: not an ImageFolder layout (root/CLASS/IMAGE.jpg): {err}") from err
    _check_headers([Path(file) for file, _ in folder.samples], max_pixels)
    return folder


def _check_headers(paths: Sequence[Path], max_pixels: int | None) -> None:
    """Stop before training on the first file whose header PIL cannot read or that is over the budget.

    Only headers are read (cheap); a file that fails here is handed to :func:`camlens.zoo.load_image`,
    so the error is its ValueError naming the file. Damage past the header (a truncated image) is found
    by the full decode in training, where ``load_image`` raises the same kind of ValueError.
    """
    import warnings

    from PIL import Image

    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as opened:
                    width, height = opened.size
            ok = max_pixels is None or width * height <= max_pixels
        except Exception:  # PIL raises many types for a hostile header; load_image below names the fault
            ok = False
        if not ok:
            try:
                load_image(path, max_pixels=max_pixels)
            except ValueError:
                raise
            except Exception as err:  # a header only PIL's full loader chokes on
                raise ValueError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err


def _batches(
    dataset: Any, indices: list[int], batch_size: int, shuffle: bool, gen: random.Random
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = list(indices)
    if shuffle:
        gen.shuffle(order)
    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start : start + batch_size]]
        xs = torch.stack([torch.as_tensor(item[0]) for item in items])
        ys = torch.as_tensor([int(item[1]) for item in items])
        yield xs, ys


class _NonFiniteLoss(ValueError):
    """The training loss of batch ``batch`` (1-based) of a :func:`run_epoch` became ``value``."""

    def __init__(self, batch: int, value: float) -> None:
        super().__init__(f"training loss became {value} at batch {batch}; lower the learning rate")
        self.batch = batch
        self.value = value


def run_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scheduler: Any = None,
    device: torch.device | str = "cpu",
    total: int | None = None,
    progress: bool = True,
    desc: str = "",
) -> tuple[float, float]:
    """One pass over ``batches``: trains with cross-entropy when ``optimizer`` is given, else evaluates.

    Returns (mean loss, accuracy). The caller sets train/eval modes; this steps the optimizer and, after
    each optimizer step, ``scheduler`` (a per-step learning-rate schedule) when given.

    Raises:
        ValueError: while training, a batch's loss is nan or infinite (the learning rate is too high, or
            the data holds non-finite values); raised before that batch's step, so the step is not taken.
    """
    from tqdm.auto import tqdm

    loss_sum, correct, seen = 0.0, 0, 0
    bar = tqdm(batches, total=total, desc=desc, disable=not progress, leave=False)
    with torch.set_grad_enabled(optimizer is not None):
        for batch, (x, y) in enumerate(bar, 1):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            value = float(loss.detach())
            if optimizer is not None:
                if not math.isfinite(value):
                    raise _NonFiniteLoss(batch, value)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            loss_sum += value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    if seen == 0:
        return math.nan, math.nan
    return loss_sum / seen, correct / seen


def finetune(
    model: GapNet,
    data: str | Path | torch.utils.data.Dataset,
    epochs: int = 5,
    lr: float = 0.01,
    train_blocks: int = 0,
    batch_size: int = 32,
    val_fraction: float = 0.1,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    seed: int = 0,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    image_size: int | None = None,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    max_pixels: int | None = MAX_PIXELS,
) -> dict[str, Any]:
    """Train a converted network's new head (and its last ``train_blocks`` backbone blocks) in place.

    The CAM paper fine-tunes its -GAP networks on ILSVRC after the conversion (sec. 3); this is that
    step for any labelled image set. Cross-entropy, SGD with momentum (or Adam), seeded split and order.
    Frozen parts stay in eval mode while training, so their batch-norm statistics do not move either.

    Args:
        model: a :class:`GapNet` from :func:`convert`; trained in place, returned in eval mode.
        data: an ImageFolder root (``root/CLASS/IMAGE``; images resized to ``image_size`` square and
            normalised with ``mean``/``std``) or a ``Dataset`` of ``(image tensor, class id)``.
        epochs: passes over the training split.
        lr: learning rate.
        train_blocks: how many of the backbone's last blocks (see :meth:`GapNet.blocks`) to train as
            well; ``-1`` trains the whole backbone.
        batch_size: images per step.
        val_fraction: share of the data held out (seeded) for the validation accuracy; 0 for none.
        checkpoint: file written after every epoch (weights, config, class names, history).
        device: where to train.
        progress: tqdm bars per epoch.
        seed: seeds the split, the order and the torch RNG.
        optimizer: ``"sgd"`` or ``"adam"``.
        momentum: SGD momentum.
        weight_decay: L2 penalty of the trained parameters.
        image_size: ImageFolder images are resized to this (default: the convert probe's size).
        mean: ImageFolder normalisation mean (ImageNet's by default).
        std: ImageFolder normalisation std.
        max_pixels: ImageFolder images with more pixels are refused (see :func:`camlens.zoo.load_image`).

    Every ImageFolder file's header is read before training: an unreadable or over-budget image stops
    the run there, and an image damaged past its header stops it when training decodes it; either way
    with a ValueError naming the file, never by training on fewer images than the folder holds.

    Training stops at once when the loss, the weights or the validation loss become nan or infinite;
    the checkpoint is written only after an epoch that ended with finite weights, so a file an earlier
    epoch wrote keeps that epoch's weights. The model itself is left as the failed step left it.

    Returns:
        ``{"epoch": [...], "train_loss": [...], "train_acc": [...], "val_loss": [...], "val_acc": [...],
        "seconds": [...], "trainable": n_params, "checkpoint": path or None, "classes": [...]}``.

    Example:
        >>> history = finetune(net, "birds/train", epochs=3, train_blocks=1, checkpoint="birds.pt")
        >>> history["val_acc"][-1]

    Raises:
        ValueError: an argument out of range (the message names it, what it got and the fix); an
            unreadable image; a loss or weights that became nan or infinite.
    """
    if not isinstance(model, GapNet):
        raise TypeError(f"finetune trains a GapNet made by camlens.gap.convert, got {type(model).__name__}")
    if not (_is_real(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}; try 0.01 for SGD, 0.001 for Adam")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if lr > torch.finfo(dtype).max:  # the optimizer's step could not even represent it
        raise ValueError(f"lr {lr!r} is over the largest {dtype} of the network's weights; try 0.01 for SGD")
    if not _is_int(epochs, 1):
        raise ValueError(f"epochs must be an int >= 1 (passes over the training split), got {epochs!r}")
    if not _is_int(batch_size, 1):
        raise ValueError(f"batch_size must be an int >= 1 (images per step), got {batch_size!r}")
    if not (_is_real(val_fraction) and 0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1) (the share held out; 0 for none), got {val_fraction!r}")
    if not _is_int(train_blocks, -1):
        raise ValueError(
            f"train_blocks must be an int >= -1 (-1: the whole backbone, 0: the head only), got {train_blocks!r}"
        )
    if image_size is not None and not _is_int(image_size, 1):
        raise ValueError(
            f"image_size must be an int >= 1 (pixels of the square training input) or None, got {image_size!r}"
        )
    if max_pixels is not None and not _is_int(max_pixels, 1):
        raise ValueError(f"max_pixels must be an int >= 1 or None (no limit), got {max_pixels!r}")
    for name, value in (("momentum", momentum), ("weight_decay", weight_decay)):
        if not (_is_real(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or not all(_is_real(v) for v in values) or (name == "std" and min(values) <= 0):
            raise ValueError(
                f"{name} must be 3 finite numbers (R, G, B){', all > 0' * (name == 'std')}, got {values!r}"
            )
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    blocks = model.blocks()
    if train_blocks > len(blocks):
        raise ValueError(
            f"train_blocks must be -1 (all) or 0..{len(blocks)} "
            f"(the backbone has {len(blocks)} block{'s' * (len(blocks) != 1)}), got {train_blocks}"
        )

    if isinstance(data, (str, Path)):
        size = image_size or int(model.config.get("input_size", [3, 224, 224])[-1])
        dataset = _image_folder(Path(data), size, mean, std, max_pixels)
        classes = list(dataset.classes)
        # what an image needs to look like for this network, for whoever loads the checkpoint
        model.config.update(image_size=size, mean=[float(v) for v in mean], std=[float(v) for v in std])
    else:
        dataset = data
        classes = [str(c) for c in getattr(data, "classes", [])]
    n = len(dataset)  # type: ignore[arg-type]
    if classes and len(classes) != model.fc.out_features:
        raise ValueError(
            f"the data has {len(classes)} classes but the network outputs {model.fc.out_features}; "
            f"convert the model with num_classes={len(classes)}"
        )
    n_val = round(n * val_fraction)
    if n - n_val < 1:
        raise ValueError(f"no training images left: {n} images, val_fraction={val_fraction}")
    gen = random.Random(seed)
    order = list(range(n))
    gen.shuffle(order)
    val_idx, train_idx = order[:n_val], order[n_val:]

    trained = [*blocks] if train_blocks == -1 else blocks[len(blocks) - train_blocks :]
    for p in model.features.parameters():
        p.requires_grad_(False)
    for block in trained:
        for p in block.parameters():
            p.requires_grad_(True)
    for p in model.head_parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    model.to(device)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    history: dict[str, Any] = {k: [] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")}
    history.update(trainable=sum(p.numel() for p in params), checkpoint=None, classes=classes)
    steps = -(-len(train_idx) // batch_size)
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.eval()
            model.extra.train()
            model.fc.train()
            for block in trained:
                block.train()
            try:
                train_loss, train_acc = run_epoch(
                    model,
                    _batches(dataset, train_idx, batch_size, True, gen),
                    opt,
                    device=device,
                    total=steps,
                    progress=progress,
                    desc=f"epoch {epoch}/{epochs}",
                )
            except _NonFiniteLoss as err:
                raise ValueError(
                    f"training loss became {err.value} at epoch {epoch}, batch {err.batch}; lower --lr (now {lr:g})"
                ) from err
            # the last step of an epoch is followed by no training loss that would show its damage
            if not all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()):
                raise ValueError(
                    f"training weights became non-finite at epoch {epoch}, batch {steps}; lower --lr (now {lr:g})"
                )
            model.eval()
            val_loss, val_acc = run_epoch(
                model,
                _batches(dataset, val_idx, batch_size, False, gen),
                device=device,
                total=-(-len(val_idx) // batch_size),
                progress=progress,
                desc="validation",
            )
            if val_idx and not math.isfinite(val_loss):
                raise ValueError(f"validation loss became {val_loss} at epoch {epoch}; lower --lr (now {lr:g})")
            for key, value in zip(
                history,
                (epoch, train_loss, train_acc, val_loss, val_acc, time.perf_counter() - start),
            ):
                history[key].append(value)
            if progress:
                print(
                    f"epoch {epoch}/{epochs}: train loss {train_loss:.4f} acc {train_acc:.3f}"
                    + ("" if not val_idx else f"; val loss {val_loss:.4f} acc {val_acc:.3f}")
                )
            if checkpoint is not None:
                history["checkpoint"] = str(checkpoint)
                save_checkpoint(model, checkpoint, classes=classes, history=history)
    finally:
        model.eval()
    return history


def save_checkpoint(
    model: GapNet, path: str | Path, *, classes: Sequence[str] = (), history: dict[str, Any] | None = None
) -> None:
    """Write ``model`` so :func:`load_checkpoint` rebuilds it.

    With ``model.config["source"]`` naming a torchvision architecture (``"torchvision:vgg16"``) or a
    camlens built-in model, the file holds only tensors and plain values: loading it runs no code from
    the file, and the backbone is rebuilt from the source. Without a source the backbone's module is
    pickled into the file as well; unpickling it runs code from the file, so :func:`load_checkpoint`
    refuses it unless told ``trust=True`` (CLI ``--trust-model-file``). Any other source (a factory or
    a model file) also needs ``trust=True``: the file names code to import or load.
    """
    state = {
        "format": _FORMAT,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "history": {k: v for k, v in (history or {}).items() if k != "checkpoint"},
    }
    if not model.config.get("source"):
        buffer = io.BytesIO()
        torch.save(copy.deepcopy(model).cpu(), buffer)
        state["module"] = buffer.getvalue()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def is_checkpoint(obj: object) -> bool:
    """Whether ``obj`` (a ``torch.load``-ed object) is a camlens GAP checkpoint: a dict with its ``format``.

    Example:
        >>> state = torch.load("vgg16_gap.pt", weights_only=True)  # weights_only: runs no code
        >>> camlens.gap.is_checkpoint(state)  # True
    """
    return isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"].startswith(_FAMILY)


def _safe_source(source: object) -> bool:
    """A source :func:`load_checkpoint` can rebuild without running code the file names."""
    return isinstance(source, str) and (source.startswith("torchvision:") or source in BUILTIN)


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """The checkpoint dict of ``path``, read with ``weights_only=True`` (no code runs)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch/pickle raise many types for a foreign file
        raise ValueError(f"{path}: not a camlens GAP checkpoint ({type(err).__name__})") from err
    if not is_checkpoint(state):
        raise ValueError(f"{path}: not a camlens GAP checkpoint (no format {_FORMAT!r}); write one with finetune")
    if state["format"] != _FORMAT:
        raise ValueError(f"{path}: a {state['format']!r} checkpoint; this camlens reads {_FORMAT!r}: upgrade camlens")
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("state_dict"), dict):
        raise ValueError(f"{path}: a damaged camlens GAP checkpoint (no config or state_dict)")
    return state


def _trust_problem(path: Path, state: Mapping[str, Any]) -> str | None:
    """Why loading ``state`` would run code from the file, or None when it would not."""
    source = state["config"].get("source")
    hint = "Load it only if you trust its source: --trust-model-file (CLI) or trust=True"
    if not source:
        return f"{path}: this GAP checkpoint embeds a pickled module; unpickling runs code from the file. {hint}"
    if not _safe_source(source):
        return (
            f"{path}: this GAP checkpoint rebuilds its backbone from {source!r}, code the file names "
            f"(only torchvision:NAME and {', '.join(BUILTIN)} are safe). {hint}"
        )
    return None


def checkpoint_needs_trust(checkpoint: str | Path | Mapping[str, Any]) -> bool:
    """Whether :func:`load_checkpoint` needs ``trust=True`` for this checkpoint (a file, or its loaded dict).

    True for a checkpoint that embeds a pickled module (one saved without a ``source``) or rebuilds its
    backbone from a factory or a model file; False for one rebuilt from ``torchvision:NAME`` or a
    built-in model. Reading the file for this runs no code from it (``weights_only=True``).

    Raises:
        ValueError: the file is missing or not a camlens GAP checkpoint.
    """
    if isinstance(checkpoint, Mapping):
        if not is_checkpoint(dict(checkpoint)) or not isinstance(checkpoint.get("config"), dict):
            raise ValueError("not a camlens GAP checkpoint (a dict with format 'camlens.gap/1' and a config)")
        return _trust_problem(Path("checkpoint"), checkpoint) is not None
    return _trust_problem(Path(checkpoint), _read(Path(checkpoint), "cpu")) is not None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, trust: bool = False) -> GapNet:
    """The :class:`GapNet` saved by :func:`finetune` / :func:`save_checkpoint`, in eval mode.

    The file is read with ``torch.load(weights_only=True)``. A checkpoint with a ``torchvision:NAME``
    (or built-in) source is then rebuilt from that architecture and needs nothing more. One that embeds
    a pickled module (saved without a source) is unpickled only with ``trust=True``: unpickling runs
    code from the file. :func:`checkpoint_needs_trust` tells which kind a file is before loading it.

    The class names (for an ImageFolder) are in ``net.config["classes"]``; after :func:`finetune` on an
    image folder, ``net.config`` also holds its ``image_size``, ``mean`` and ``std``.

    Args:
        path: the checkpoint file.
        map_location: device for the weights.
        trust: allow unpickling the module a checkpoint embeds (or rebuilding it from a factory or
            model file the checkpoint names); only for files from a source you trust.

    Raises:
        ValueError: the file is missing, not a camlens GAP checkpoint, damaged, or needs ``trust=True``
            (refused before anything in it is unpickled).

    Example:
        >>> net = load_checkpoint("vgg16_gap.pt")  # saved with source="torchvision:vgg16"
        >>> net = load_checkpoint("mynet_gap.pt", trust=True)  # embeds a module: a file you made yourself
    """
    path = Path(path)
    state = _read(path, map_location)
    problem = _trust_problem(path, state)
    if problem is not None and not trust:
        raise ValueError(problem)
    config = dict(state["config"])
    try:
        if config.get("source"):
            from camlens.zoo import load_model

            original = load_model(config["source"], random_weights=True, trust=trust).model
            net = convert(
                original,
                num_classes=config["num_classes"],
                pooling=config["pooling"],
                channels=config["channels"],
                drop_last_pool=config["drop_last_pool"],
                freeze=False,
                layer=config["layer"],
                input_size=config["input_size"],
                source=config["source"],
            )
        else:
            if not isinstance(state.get("module"), bytes):
                raise ValueError(f"{path}: a damaged camlens GAP checkpoint (no source and no module)")
            net = torch.load(io.BytesIO(state["module"]), map_location=map_location, weights_only=False)
            if not isinstance(net, GapNet):
                raise ValueError(f"{path}: the saved module is a {type(net).__name__}, not a GapNet")
        net.load_state_dict(state["state_dict"])
    except KeyError as err:
        raise ValueError(f"{path}: a damaged camlens GAP checkpoint (its config has no {err})") from err
    except RuntimeError as err:
        detail = " ".join(str(err).strip().splitlines()[:2])[:300]
        raise ValueError(f"{path}: the checkpoint's weights do not fit its network: {detail}") from err
    net.config = {**config, "classes": list(state.get("classes", []))}
    return net.to(map_location).eval()
