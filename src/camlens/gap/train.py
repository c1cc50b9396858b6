"""Fine-tuning a converted :class:`~camlens.gap.convert.GapNet` (CAM paper, sec. 3): finetune, run_epoch.

Images of an ImageFolder are read with camlens' one image loader, :func:`camlens.data.images.load_image`.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from camlens.data.images import MAX_PIXELS, load_image
from camlens.gap.checkpoint import save_checkpoint
from camlens.gap.convert import GapNet, _is_int, _is_real

__all__ = ["finetune", "run_epoch"]


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

    Examples:
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
