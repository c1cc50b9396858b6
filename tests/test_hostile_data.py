"""Hostile data sets against camlens.datasets and camlens.evaluate: every value below is worked out by hand.

* Annotation XML: "billion laughs" (nested entities), external entities, and one element whose text comes in
  hundreds of thousands of pieces (a quadratic ``text += data`` took minutes on both).
* Images: a PNG whose header claims 60000 x 60000 pixels, a truncated JPEG, an image over ``max_pixels``:
  each is ONE skipped-image line, and the others are scored as if it were not there (also with workers).
* Output: results.json is strict JSON (no NaN), a NaN map warns once per image, and hostile image ids
  (``../../x.png``, ``...png``) cannot name a file outside ``out``.

The model and images are those of tests/test_evaluate.py: RedNet's score of class 0 is the mean of the red
channel, class 1 scores 0.1, and the map of class 0 is the red channel; images a, b (label 0) are localised
and classified right, c (label 1) is classified as 0: top-1 cls / loc err 100/3 %, GT-known 200/3 %.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from camlens import zoo
from camlens.data import DatasetError, ImageDataset, read_csv, read_ilsvrc
from camlens.data.ilsvrc import _parse_xml
from camlens.evaluate import Evaluation, evaluate
from tests.test_evaluate import RedNet, squares

pytestmark = pytest.mark.usefixtures("one_thread")

TENCH = "n01440764"
SKIP_LINE = re.compile(r"^camlens evaluate: skipped image (.+?): (.+)$")


@pytest.fixture
def bundle() -> zoo.ModelBundle:
    return zoo.ModelBundle(RedNet().eval(), "rednet", size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def claims_size(path: Path, width: int, height: int) -> Path:
    """A valid 1 x 1 PNG whose IHDR is patched to claim ``width x height`` (CRC recomputed): a bomb's header."""
    Image.new("RGB", (1, 1), (255, 0, 0)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"  # 8-byte signature, 4-byte length, then the chunk type
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # CRC over type + 13 data bytes
    path.write_bytes(bytes(data))
    return path


def truncated_jpeg(path: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    scan = data.index(b"\xff\xda")  # start of scan: the header and tables before it stay intact
    path.write_bytes(data[: scan + 100])
    return path


def skip_lines(err: str) -> list[tuple[str, str]]:
    """(path, reason) of each skipped-image line on stderr; every non-empty line must be one."""
    lines = [line for line in err.splitlines() if line.strip()]
    found = [SKIP_LINE.match(line) for line in lines]
    assert all(found), lines
    return [(m.group(1), m.group(2)) for m in found if m]


def assert_abc_table(result: Evaluation) -> None:
    row = result.rows["gradcam"]
    assert row["top1_cls_err"] == pytest.approx(100 / 3)
    assert row["top1_loc_err"] == pytest.approx(100 / 3)
    assert row["gt_known_loc_acc"] == pytest.approx(200 / 3)


# ------------------------------------------------------------------------------------------ XML


def laughs(path: Path, levels: int = 10, refs: int = 10) -> Path:
    """Billion laughs: entity a{i} is ``refs`` references to a{i-1}; <name>&a9;</name> expands to 10^10 'lol'.

    The first declaration is on line 3.
    """
    lines = ['<?xml version="1.0"?>', "<!DOCTYPE annotation [", '<!ENTITY a0 "lol">']
    lines += [f'<!ENTITY a{i} "{f"&a{i - 1};" * refs}">' for i in range(1, levels)]
    lines += ["]>", "<annotation>", f"  <object><name>&a{levels - 1};</name></object>", "</annotation>"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    root = tmp_path / "train"
    (root / TENCH).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / TENCH / "a.png")
    xml = laughs(root / TENCH / "a.xml")
    assert xml.stat().st_size < 1000
    start = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        read_ilsvrc(root)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # the unfixed parser ran for minutes (killed after 120 s)
    assert str(info.value).startswith(
        f"{xml}:3: entity declarations are refused in annotation XML (untrusted input); "
    ), str(info.value)
    assert info.value.file == xml and info.value.line == 3


@pytest.mark.parametrize(
    "doctype, line",
    [
        ('<!DOCTYPE annotation [\n<!ENTITY x SYSTEM "file:///etc/passwd">\n]>', 2),  # external entity
        ('<!DOCTYPE annotation [\n\n<!ENTITY % p SYSTEM "http://example.com/evil.dtd">\n%p;\n]>', 3),  # parameter
        ('<!DOCTYPE annotation [\n<!NOTATION gif SYSTEM "gif">\n<!ENTITY x SYSTEM "x.gif" NDATA gif>\n]>', 3),
    ],
    ids=["external", "parameter", "unparsed"],
)
def test_other_entities_are_refused(tmp_path: Path, doctype: str, line: int) -> None:
    xml = tmp_path / "a.xml"
    xml.write_text(f"{doctype}\n<annotation><object><name>{TENCH}</name></object></annotation>\n")
    with pytest.raises(DatasetError, match=r"entity declarations are refused") as info:
        _parse_xml(xml)
    assert (info.value.file, info.value.line) == (xml, line)


def test_text_in_many_pieces_is_read_in_linear_time(tmp_path: Path) -> None:
    """~5.6 MB of text in one element, as 'ab' and '&amp;' alternating: 1.6 million pieces for expat."""
    pieces = 800_000
    xml = tmp_path / "a.xml"
    xml.write_text(
        f"<annotation>\n<filename>{'ab&amp;' * pieces}</filename>\n<size><width>8</width><height>6</height></size>\n"
        f"<object><name>{TENCH}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>8</xmax><ymax>6</ymax></bndbox>"
        "</object>\n</annotation>\n"
    )
    start = time.perf_counter()
    root = _parse_xml(xml)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0  # the unfixed text += data ran for minutes (killed after 100 s)
    filename = root.find("filename")
    assert filename is not None and filename.text == "ab&" * pieces and filename.line == 2
    size = root.find("size")
    assert size is not None and size.line == 3 and [c.text for c in size.children] == ["8", "6"]


# ------------------------------------------------------------------------------------------ images


def test_dataset_errors_for_bomb_truncated_and_over_budget(tmp_path: Path) -> None:
    bomb = claims_size(tmp_path / "bomb.png", 60000, 60000)
    cut = truncated_jpeg(tmp_path / "cut.jpg")
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    csv = squares(tmp_path, ["bomb.png,0,,,,", "cut.jpg,0,,,,", "big.png,0,,,,"])
    data = read_csv(csv)
    dataset = ImageDataset(data, size=8, max_pixels=32 * 32)
    with pytest.raises(DatasetError, match=r"3,600,000,000 pixels is over the budget of 1,024") as info:
        dataset[3]
    assert info.value.file == bomb
    with pytest.raises(DatasetError, match=r"bomb\.png: .*3,600,000,000 pixels is over the budget of 1,024"):
        dataset.original_size(3)
    with pytest.raises(DatasetError, match=r"cut\.jpg: unreadable or truncated image \(image file is truncated"):
        dataset[4]
    assert dataset.original_size(4) == (32, 32)  # its header is fine
    over = r"big\.png: 40 x 40 = 1,600 pixels is over the budget of 1,024"
    with pytest.raises(DatasetError, match=over):
        dataset[5]
    with pytest.raises(DatasetError, match=over):
        dataset.original_size(5)
    assert dataset[0][0].shape == (3, 8, 8) and cut.is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_evaluate_skips_a_bomb_with_one_line(
    tmp_path: Path, bundle: zoo.ModelBundle, capsys: pytest.CaptureFixture[str], workers: int
) -> None:
    bomb = claims_size(tmp_path / "bomb.png", 60000, 60000)
    csv = squares(tmp_path, ["bomb.png,0,0,0,4,4"])  # listed last: its batch also holds c
    result = evaluate(bundle, csv, "gradcam", batch_size=2, workers=workers, progress=False, out=tmp_path / "out")
    (path, reason), *more = skip_lines(capsys.readouterr().err)
    assert not more and path == str(bomb)
    assert (
        "3,600,000,000 pixels is over the budget of 89,478,485" in reason
        and "remove it from the data set or replace it" in reason
    )
    assert result.images == 3 and result.skipped == [{"path": str(bomb), "reason": reason}]
    assert_abc_table(result)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["images"] == 3 and doc["skipped"] == [{"path": str(bomb), "reason": reason}]
    assert "(3 images, 1 skipped)" in (tmp_path / "out" / "table.md").read_text()


def test_evaluate_skips_truncated_and_over_budget(
    tmp_path: Path, bundle: zoo.ModelBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    """First in the file: the first batch (of 2) is all skipped, and the run still goes on."""
    truncated_jpeg(tmp_path / "cut.jpg")
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    csv = squares(tmp_path)
    csv.write_text(csv.read_text().replace("\n", "\ncut.jpg,0,0,0,4,4\nbig.png,1,,,,\n", 1))
    result = evaluate(bundle, csv, "gradcam", batch_size=2, progress=False, max_pixels=32 * 32)
    skipped = skip_lines(capsys.readouterr().err)
    assert [Path(p).name for p, _ in skipped] == ["cut.jpg", "big.png"]
    assert skipped[0][1].startswith("unreadable or truncated image (image file is truncated")
    assert skipped[1][1].startswith("40 x 40 = 1,600 pixels is over the budget of 1,024")
    assert result.images == 3 and [s["path"] for s in result.skipped] == [p for p, _ in skipped]
    assert_abc_table(result)


def test_evaluate_skips_an_image_its_annotation_does_not_fit(
    tmp_path: Path, bundle: zoo.ModelBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    csv = squares(tmp_path, ["small.png,0,0,0,9,8"])
    result = evaluate(bundle, csv, "gradcam", progress=False)
    [(path, reason)] = skip_lines(capsys.readouterr().err)
    assert Path(path).name == "small.png"
    assert (
        reason
        == "a ground-truth box [[0.0, 0.0, 9.0, 8.0]] extends past the 8 x 8 image (small.png); fix the annotation"
    )
    assert result.images == 3
    assert_abc_table(result)


def test_evaluate_with_no_readable_image(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    bomb = claims_size(tmp_path / "bomb.png", 60000, 60000)
    claims_size(tmp_path / "bomb2.png", 60000, 60000)
    (tmp_path / "bad.csv").write_text("bomb.png,0\nbomb2.png,0\n")
    first = rf"^no image could be read: first: {re.escape(str(bomb))}: 3,600,000,000 pixels is over the budget"
    with pytest.raises(ValueError, match=rf"{first} .*\(2 images skipped\)$"):
        evaluate(bundle, tmp_path / "bad.csv", "gradcam", progress=False)


# ------------------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("limit", 0, "limit must be None or >= 1, got 0; pass how many images to evaluate, or None for all"),
        ("limit", -1, "limit must be None or >= 1, got -1; "),
        ("batch_size", 0, "batch_size must be >= 1, got 0; "),
        ("workers", -1, "workers must be >= 0, got -1; "),
        ("steps", 0, "steps must be >= 1, got 0; "),
        ("examples", -1, "examples must be >= 0, got -1; "),
        ("topk", 0, "topk must be >= 1, got 0; "),
        ("threshold", 0.0, "threshold must be a finite number in (0, 1], got 0.0; "),
        ("threshold", 1.5, "threshold must be a finite number in (0, 1], got 1.5; "),
        ("threshold", math.nan, "threshold must be a finite number in (0, 1], got nan; "),
        ("sanity_images", 0, "sanity_images must be >= 1, got 0; "),
        ("max_pixels", 0, "max_pixels must be None or >= 1, got 0; "),
    ],
)
def test_out_of_range_arguments(
    tmp_path: Path, bundle: zoo.ModelBundle, argument: str, value: object, message: str
) -> None:
    csv = squares(tmp_path)
    with pytest.raises(ValueError) as info:
        evaluate(bundle, csv, "gradcam", progress=False, **{argument: value})  # type: ignore[arg-type]
    assert str(info.value).startswith(message), str(info.value)


def test_limit_takes_the_first_images(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    """limit=1: only a (right) -> both errors 0; limit=2: a and b -> 0; limit=None: 100/3 (c is wrong)."""
    csv = squares(tmp_path)
    assert evaluate(bundle, csv, "gradcam", limit=1, progress=False).images == 1
    assert evaluate(bundle, csv, "gradcam", limit=2, progress=False).rows["gradcam"]["top1_cls_err"] == 0.0
    assert_abc_table(evaluate(bundle, csv, "gradcam", limit=None, progress=False))


# ------------------------------------------------------------------------------------------ output


class NaNWhereGreen(nn.Module):
    """Identity, except NaN at every pixel whose green value is above 0.5 (all channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.where(x[:, 1:2] > 0.5, torch.tensor(float("nan")), torch.tensor(0.0))


class NaNNet(RedNet):
    """RedNet whose features hold NaN where the image is green; the head reads them as 0, so scores stay finite."""

    def __init__(self) -> None:
        super().__init__()
        self.features = NaNWhereGreen()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x).nan_to_num(0.0)).flatten(1))


class NaNScoreNet(RedNet):
    """RedNet whose scores are NaN for an image with any green: NaN reaches the target scores themselves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out + torch.where((x[:, 1] > 0.5).flatten(1).any(1, keepdim=True), float("nan"), 0.0)


def test_nan_scores_warn_by_file_name_only(tmp_path: Path) -> None:
    """The core warns about NaN target scores by sample index; evaluate names the file instead, once, not both."""
    csv = squares(tmp_path, ["n.png,0,4,6,20,22"])
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[0, 0, 1] = 255
    Image.fromarray(pixels).save(tmp_path / "n.png")
    bundle = zoo.ModelBundle(NaNScoreNet().eval(), "nanscores", size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate(bundle, csv, "gradcam", progress=False)
    messages = [str(w.message) for w in caught if "NaN" in str(w.message)]
    assert messages == [f"{tmp_path / 'n.png'}: the model's scores for this image are NaN or infinite"]


def test_nan_map_warns_once_per_image_and_json_is_strict(tmp_path: Path) -> None:
    """Image n: a's red square plus one green pixel at (0, 0), label 0. Its score_0 is still 256/1024 = 0.25 (the
    NaN pixel reads 0), so it is classified right; its maps are NaN at (0, 0), counted as 0: the red square, boxed
    right. Over a, b, c, n: top-1 cls err = top-1 loc err = 1/4 (only c), GT-known 3/4."""
    csv = squares(tmp_path, ["n.png,0,4,6,20,22"])
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[6:22, 4:20, 0] = 255
    pixels[0, 0, 1] = 255
    Image.fromarray(pixels).save(tmp_path / "n.png")
    nan_bundle = zoo.ModelBundle(NaNNet().eval(), "nannet", size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(nan_bundle, csv, "gradcam,layercam", out=tmp_path / "out", progress=False)
    messages = [str(w.message) for w in caught if "NaN" in str(w.message)]
    assert messages == [f"{tmp_path / 'n.png'}: the gradcam map has NaN or infinite values (counted as 0)"]
    for method in ("gradcam", "layercam"):
        row = result.rows[method]
        assert row["top1_cls_err"] == pytest.approx(25.0)
        assert row["top1_loc_err"] == pytest.approx(25.0)
        assert row["gt_known_loc_acc"] == pytest.approx(75.0)

    def no_constants(token: str) -> None:
        raise AssertionError(f"results.json holds {token}")

    doc = json.loads((tmp_path / "out" / "results.json").read_text(), parse_constant=no_constants)
    assert doc["rows"]["gradcam"]["top1_cls_err"] == pytest.approx(25.0)


def test_results_json_writes_non_finite_numbers_as_null(tmp_path: Path) -> None:
    rows = {"cam": {"deletion_auc": float("nan"), "insertion_auc": np.float32("inf"), "pointing_acc": np.float64(50)}}
    curves = {"cam": {"deletion": {"fractions": np.array([0.0, 1.0]), "scores": [1.0, -math.inf]}}}
    Evaluation(["cam"], rows, 2, curves=curves).write(tmp_path)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text, parse_constant=lambda token: pytest.fail(f"results.json holds {token}"))
    assert doc["rows"]["cam"] == {"deletion_auc": None, "insertion_auc": None, "pointing_acc": 50.0}


def test_hostile_image_ids_stay_inside_out(tmp_path: Path, bundle: zoo.ModelBundle) -> None:
    """Ids ``../../x.png`` (an image two folders up) and ``...png`` (stem ``..``): the per-image pictures are
    ``x.png`` (the name of a file outside the data root) and ``image.png`` (``..`` sanitised to nothing)."""
    root = tmp_path / "a" / "b" / "c"
    root.mkdir(parents=True)
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[6:22, 4:20, 0] = 255
    Image.fromarray(pixels).save(tmp_path / "a" / "x.png")
    Image.fromarray(pixels).save(root / "...png", format="PNG")
    (root / "d.csv").write_text("../../x.png,0,4,6,20,22\n...png,0,4,6,20,22\n")
    out = tmp_path / "a" / "b" / "c" / "out"
    result = evaluate(bundle, root / "d.csv", "gradcam", out=out, progress=False)
    assert result.rows["gradcam"]["gt_known_loc_acc"] == pytest.approx(100.0)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "a/b/c/...png",
        "a/b/c/d.csv",
        "a/b/c/out/examples.png",
        "a/b/c/out/examples/gradcam.png",
        "a/b/c/out/examples/gradcam/image.png",
        "a/b/c/out/examples/gradcam/x.png",
        "a/b/c/out/progress/batch-000000.json",
        "a/b/c/out/progress/run.json",
        "a/b/c/out/results.json",
        "a/b/c/out/table.csv",
        "a/b/c/out/table.md",
        "a/x.png",
    ]
