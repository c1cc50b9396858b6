"""Data set readers (camlens.data) on small fixture trees built here, every box converted by hand.

Conventions checked: camlens boxes are [x0, y0, x1, y1) 0-based END-EXCLUSIVE.
* Pascal VOC / ImageNet XML: 1-based inclusive -> [xmin - 1, ymin - 1, xmax, ymax).
* wsolevaluation localization.txt: 0-based, x1/y1 inclusive -> [x0, y0, x1 + 1, y1 + 1).
* CSV: already end-exclusive, taken as written.
"""

from __future__ import annotations

import pickle
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from camlens.data import (
    DatasetError,
    ImageDataset,
    LocalizationSet,
    Sample,
    Skipped,
    collate,
    load_masks,
    open_dataset,
    read_csv,
    read_ilsvrc,
    read_wsol_metadata,
)
from camlens.zoo import IMAGENET_MEAN, IMAGENET_STD, load_image

pytestmark = pytest.mark.usefixtures("one_thread")

TENCH, GOLDFISH, SHARK = "n01440764", "n01443537", "n01484850"


def image(path: Path, w: int, h: int, color: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), color).save(path)
    return path


def voc(path: Path, w: int | None, h: int | None, objects: list[tuple[str, object, object, object, object]]) -> Path:
    """A VOC XML file with fixed line numbers: <size> on lines 3-7; object k (0-based) on lines 8 + 9k ..

    object k: <object> 8+9k, <name> 9+9k, <bndbox> 10+9k, <xmin> 11+9k, <ymin> 12+9k, <xmax> 13+9k, <ymax> 14+9k.
    """
    lines = ["<annotation>", "  <filename>x</filename>"]
    if w is None:
        lines += ["  <folder>val</folder>"] * 5
    else:
        lines += [
            "  <size>",
            f"    <width>{w}</width>",
            f"    <height>{h}</height>",
            "    <depth>3</depth>",
            "  </size>",
        ]
    for name, x0, y0, x1, y1 in objects:
        lines += ["  <object>", f"    <name>{name}</name>", "    <bndbox>"]
        lines += [f"      <{t}>{v}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1))]
        lines += ["    </bndbox>", "  </object>"]
    lines.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def boxes_of(data: LocalizationSet) -> list[list[list[float]]]:
    return [s.boxes.tolist() for s in data]


# --------------------------------------------------------------------------------------------- ILSVRC


def synset_tree(tmp_path: Path) -> Path:
    """train/{n01440764,n01443537}/ with XML beside, in root/Annotations/, and in root/../annotations/."""
    root = tmp_path / "train"
    image(root / TENCH / "a.png", 16, 12)
    voc(root / "Annotations" / TENCH / "a.xml", 16, 12, [(TENCH, 2, 3, 8, 9), (TENCH, 10, 1, 16, 12)])
    image(root / TENCH / "c.png", 8, 8)
    voc(tmp_path / "annotations" / "c.xml", 8, 8, [(TENCH, 1, 1, 1, 1)])  # VOC 1-pixel box: xmin == xmax
    image(root / GOLDFISH / "b.JPEG", 20, 10)
    voc(root / GOLDFISH / "b.xml", 20, 10, [(GOLDFISH, 1, 1, 20, 10), (TENCH, 3, 4, 5, 6)])
    return root


def test_ilsvrc_synset_folders(tmp_path: Path) -> None:
    root = synset_tree(tmp_path)
    data = read_ilsvrc(root)
    assert data.format == "ilsvrc" and data.root == root and data.classes == [TENCH, GOLDFISH]  # sorted wnids
    assert [s.image_id for s in data] == [f"{TENCH}/a.png", f"{TENCH}/c.png", f"{GOLDFISH}/b.JPEG"]
    assert [s.path for s in data] == [root / s.image_id for s in data] and all(s.path.is_absolute() for s in data)
    assert [s.label for s in data] == [0, 0, 1]
    assert [s.size for s in data] == [(16, 12), (8, 8), (20, 10)]
    # VOC (1-based inclusive) -> [xmin-1, ymin-1, xmax, ymax): (2,3,8,9) -> [1,2,8,9); (10,1,16,12) -> [9,0,16,12)
    # (1,1,1,1) -> [0,0,1,1): one pixel; b: (1,1,20,10) -> [0,0,20,10), the whole image; the tench box in the
    # goldfish image is not ground truth for the goldfish class (CAM paper: boxes "of that class").
    assert boxes_of(data) == [[[1, 2, 8, 9], [9, 0, 16, 12]], [[0, 0, 1, 1]], [[0, 0, 20, 10]]]
    assert all(s.boxes.dtype == np.float64 and not s.boxes.flags.writeable for s in data)
    assert data[2].mask is None and data[2].ignore is None and data[2].masks == ()
    assert len(data) == 3 and list(data) == data.samples and "images=3" in repr(data)


def test_ilsvrc_classes_in_model_order(tmp_path: Path) -> None:
    root = synset_tree(tmp_path)
    data = read_ilsvrc(root, classes=[SHARK, GOLDFISH, TENCH])
    assert data.classes == [SHARK, GOLDFISH, TENCH] and [s.label for s in data] == [2, 2, 1]
    with pytest.raises(DatasetError, match=rf"{GOLDFISH}: unknown class '{GOLDFISH}'.*pass classes="):
        read_ilsvrc(root, classes=[TENCH, SHARK])


def test_voc_parsing_agrees_with_torchvision(tmp_path: Path) -> None:
    tv_voc = pytest.importorskip("torchvision.datasets.voc")
    root = synset_tree(tmp_path)
    parsed = tv_voc.VOCDetection.parse_voc_xml(ET.parse(root / GOLDFISH / "b.xml").getroot())["annotation"]
    objects = parsed["object"]
    # torchvision keeps VOC's 1-based inclusive numbers; ours are shifted by -1 at the start only
    reference = [
        [float(o["bndbox"][k]) - d for k, d in zip(("xmin", "ymin", "xmax", "ymax"), (1, 1, 0, 0))] for o in objects
    ]
    assert [o["name"] for o in objects] == [GOLDFISH, TENCH]
    (goldfish,) = [s for s in read_ilsvrc(root) if s.image_id.endswith("b.JPEG")]
    assert goldfish.boxes.tolist() == [reference[0]]
    assert goldfish.size == (int(parsed["size"]["width"]), int(parsed["size"]["height"]))


def val_tree(tmp_path: Path) -> Path:
    """ILSVRC val: flat images in val/, XML with the same stem in the parallel annotations/ folder."""
    root = tmp_path / "val"
    image(root / "ILSVRC2012_val_00000001.JPEG", 12, 10)
    voc(tmp_path / "annotations" / "ILSVRC2012_val_00000001.xml", 12, 10, [(SHARK, 2, 2, 6, 6), (SHARK, 5, 5, 12, 10)])
    image(root / "ILSVRC2012_val_00000002.JPEG", 10, 12)
    voc(tmp_path / "annotations" / "ILSVRC2012_val_00000002.xml", 10, 12, [(TENCH, 1, 1, 10, 12)])
    return root


def test_ilsvrc_flat_val_labels_from_xml(tmp_path: Path) -> None:
    root = val_tree(tmp_path)
    data = read_ilsvrc(root)
    assert data.classes == [TENCH, SHARK] and [s.label for s in data] == [1, 0]
    # (2,2,6,6) -> [1,1,6,6); (5,5,12,10) -> [4,4,12,10); (1,1,10,12) -> [0,0,10,12)
    assert boxes_of(data) == [[[1, 1, 6, 6], [4, 4, 12, 10]], [[0, 0, 10, 12]]]
    # LOC_synset_mapping.txt style class file: "wnid words"; the wnid is the class
    mapping = write(
        tmp_path / "synsets.txt", f"{TENCH} tench, Tinca tinca\n{GOLDFISH} goldfish\n\n{SHARK} great white shark\n"
    )
    data = read_ilsvrc(root, classes=mapping)
    assert data.classes == [TENCH, GOLDFISH, SHARK] and [s.label for s in data] == [2, 0]


def test_ilsvrc_official_layout_with_labels_file(tmp_path: Path) -> None:
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    xml = tmp_path / "ILSVRC" / "Annotations" / "CLS-LOC" / "val"
    image(root / "x1.JPEG", 30, 20)
    voc(xml / "x1.xml", 30, 20, [("n07", 11, 1, 30, 20), ("n07", 1, 1, 4, 4)])
    image(root / "x2.JPEG", 30, 20)
    voc(xml / "x2.xml", 30, 20, [("n03", 2, 3, 4, 5), ("n09", 1, 1, 2, 2)])
    labels = write(tmp_path / "labels.txt", "# path label\nx2 3\n\nx1.JPEG,7\n")  # file order; no suffix; comma
    wnids = [f"n{i:02d}" for i in range(10)]
    data = read_ilsvrc(root, labels=labels, classes=wnids)
    assert [s.image_id for s in data] == ["x2", "x1.JPEG"] and [s.path.name for s in data] == ["x2.JPEG", "x1.JPEG"]
    assert [s.label for s in data] == [3, 7] and data.classes == wnids
    # x2 is class n03: (2,3,4,5) -> [1,2,4,5), the n09 box is dropped; x1: (11,1,30,20) -> [10,0,30,20)
    assert boxes_of(data) == [[[1, 2, 4, 5]], [[10, 0, 30, 20], [0, 0, 4, 4]]]
    # integer labels without class names: fine while each XML names one class only
    write(labels, "x1.JPEG 7\n")
    data = read_ilsvrc(root, labels=labels)
    assert data.classes is None and data[0].label == 7 and len(data[0].boxes) == 2
    write(labels, "x1.JPEG 7\nx2.JPEG 3\n")
    with pytest.raises(DatasetError, match=r"x2\.xml: objects of 2 classes \['n03', 'n09'\].*pass classes="):
        read_ilsvrc(root, labels=labels)


def test_ilsvrc_images_without_xml(tmp_path: Path) -> None:
    root = tmp_path / "train"
    image(root / TENCH / "a.png", 4, 4)
    voc(root / TENCH / "a.xml", 4, 4, [(TENCH, 1, 1, 4, 4)])
    image(root / TENCH / "b.png", 4, 4)
    with pytest.warns(UserWarning, match=r"1 of 2 images .* no XML annotation .*'n01440764/b.png'"):
        assert [s.image_id for s in read_ilsvrc(root)] == [f"{TENCH}/a.png"]
    kept = read_ilsvrc(root, missing="keep")
    assert kept[1].image_id == f"{TENCH}/b.png" and kept[1].boxes.shape == (0, 4) and kept[1].size is None
    with pytest.raises(DatasetError, match=r"b\.png: no XML annotation for image 'n01440764/b.png'; looked in"):
        read_ilsvrc(root, missing="error")
    (root / TENCH / "a.xml").unlink()
    with pytest.raises(DatasetError, match=r"none of the 2 images has an XML annotation"):
        read_ilsvrc(root)
    with pytest.raises(ValueError, match="missing must be"):
        read_ilsvrc(root, missing="ignore")


def test_ilsvrc_clip(tmp_path: Path) -> None:
    root = tmp_path / "train"
    image(root / TENCH / "a.png", 10, 8)
    voc(root / TENCH / "a.xml", 10, 8, [(TENCH, 0, 2, 12, 8)])  # xmin 0 -> -1, xmax 12 > 10
    with pytest.raises(DatasetError, match=r"a\.xml:10: box <bndbox> xmin=0 .*negative coordinate.*clip=True"):
        read_ilsvrc(root)
    assert read_ilsvrc(root, clip=True)[0].boxes.tolist() == [[0, 1, 10, 8]]


# ------------------------------------------------------------------------------------ wsolevaluation


def wsol_tree(tmp_path: Path) -> tuple[Path, Path]:
    meta, images = tmp_path / "metadata" / "ILSVRC" / "test", tmp_path / "dataset" / "ILSVRC"
    image(images / "val" / "a.png", 20, 10)
    image(images / "val" / "b.png", 8, 6)
    image(images / "val" / "c.png", 5, 7)
    write(meta / "image_ids.txt", "val/a.png\nval/b.png\nval/c.png\n")
    write(meta / "class_labels.txt", "val/a.png,5\nval/b.png,0\nval/c.png,999\nval/other.png,3\n")
    write(
        meta / "localization.txt",
        "val/a.png,0,0,19,9\nval/b.png,2,1,7,5\nval/a.png,3,4,3,4\nval/c.png,1,2,3,4\nval/other.png,0,0,1,1\n",
    )
    write(meta / "image_sizes.txt", "val/a.png,20,10\nval/b.png,8,6\n")
    return meta, images


def test_wsol_boxes(tmp_path: Path) -> None:
    meta, images = wsol_tree(tmp_path)
    data = read_wsol_metadata(meta, images)
    assert data.format == "wsol" and data.classes is None and data.root == images
    assert [s.image_id for s in data] == ["val/a.png", "val/b.png", "val/c.png"]  # image_ids.txt order
    assert [s.path for s in data] == [images / "val" / n for n in ("a.png", "b.png", "c.png")]
    assert [s.label for s in data] == [5, 0, 999]
    assert [s.size for s in data] == [(20, 10), (8, 6), None]
    # inclusive x1, y1 -> +1: (0,0,19,9) -> [0,0,20,10) the whole 20x10 image; (3,4,3,4) -> [3,4,4,5) one pixel;
    # (2,1,7,5) -> [2,1,8,6), the whole 8x6 image but its first two columns and first row; (1,2,3,4) -> [1,2,4,5)
    assert boxes_of(data) == [[[0, 0, 20, 10], [3, 4, 4, 5]], [[2, 1, 8, 6]], [[1, 2, 4, 5]]]
    assert all(s.mask is None and s.masks == () for s in data)


def test_wsol_masks(tmp_path: Path) -> None:
    meta, images = tmp_path / "meta", tmp_path / "OpenImages"
    image(images / "val" / "x" / "1.jpg", 4, 3)
    image(images / "val" / "x" / "2.jpg", 4, 3)

    def mask(name: str, pixels: list[tuple[int, int]]) -> None:
        array = np.zeros((3, 4), dtype=np.uint8)
        for r, c in pixels:
            array[r, c] = 255
        Image.fromarray(array).save(images / "val" / "x" / name)

    mask("1_m1.png", [(0, 0), (0, 1)])
    mask("1_m2.png", [(2, 3)])
    mask("1_ignore.png", [(0, 0), (1, 1)])
    mask("2_m1.png", [(1, 2)])
    write(meta / "image_ids.txt", "val/x/1.jpg\nval/x/2.jpg\n")
    write(meta / "class_labels.txt", "val/x/1.jpg,4\nval/x/2.jpg,1\n")
    write(
        meta / "localization.txt",
        "val/x/1.jpg,val/x/1_m1.png,val/x/1_ignore.png\nval/x/1.jpg,val/x/1_m2.png,\nval/x/2.jpg,val/x/2_m1.png,\n",
    )
    data = read_wsol_metadata(meta, images)
    one, two = data
    folder = images / "val" / "x"
    assert one.mask == folder / "1_m1.png" and one.masks == (folder / "1_m1.png", folder / "1_m2.png")
    assert one.ignore == folder / "1_ignore.png" and two.ignore is None and one.boxes.shape == (0, 4)
    foreground, ignore = load_masks(one)
    expected = np.zeros((3, 4), dtype=bool)
    expected[0, 0] = expected[0, 1] = expected[2, 3] = True  # union of the two instance masks
    assert np.array_equal(foreground, expected)
    expected_ignore = np.zeros((3, 4), dtype=bool)
    expected_ignore[1, 1] = True  # ignore mask minus foreground: (0, 0) is foreground
    assert np.array_equal(ignore, expected_ignore)
    foreground, ignore = load_masks(two)
    assert foreground.sum() == 1 and foreground[1, 2] and not ignore.any()
    with pytest.raises(ValueError, match="has no ground-truth mask"):
        load_masks(Sample(one.path, 0, np.zeros((0, 4))))
    # masks in a separate folder
    moved = tmp_path / "masks"
    (moved / "val").mkdir(parents=True)
    folder.rename(moved / "val" / "x")
    image(images / "val" / "x" / "1.jpg", 4, 3)
    image(images / "val" / "x" / "2.jpg", 4, 3)
    assert read_wsol_metadata(meta, images, mask_root=moved)[0].mask == moved / "val" / "x" / "1_m1.png"


# ----------------------------------------------------------------------------------------------- CSV


def test_csv_with_header(tmp_path: Path) -> None:
    image(tmp_path / "img" / "a.png", 10, 10)
    image(tmp_path / "img" / "b.png", 6, 4)
    absolute = image(tmp_path / "elsewhere" / "c.png", 5, 5)
    csv_file = write(
        tmp_path / "boxes.csv",
        "image,label,xmin,ymin,xmax,ymax,score\n"
        "img/a.png,3,0,0,10,10,0.9\n"
        "img/b.png,1,1.5,0,6,4,1\n"
        'img/a.png,3,2,3,4,5,""\n'
        f"{absolute},0,,,,,\n",
    )
    data = read_csv(csv_file)
    assert data.format == "csv" and data.classes is None and data.root == tmp_path
    assert [s.image_id for s in data] == ["img/a.png", "img/b.png", str(absolute)]
    assert [s.path for s in data] == [tmp_path / "img" / "a.png", tmp_path / "img" / "b.png", absolute]
    assert [s.label for s in data] == [3, 1, 0]
    # end-exclusive as written
    assert boxes_of(data) == [[[0, 0, 10, 10], [2, 3, 4, 5]], [[1.5, 0, 6, 4]], []]
    assert data[2].boxes.shape == (0, 4)


def test_csv_without_header_named_classes(tmp_path: Path) -> None:
    image(tmp_path / "a.png", 10, 10)
    image(tmp_path / "b.png", 10, 10)
    csv_file = write(tmp_path / "sub" / "boxes.csv", "a.png,dog,1,2,3,4\nb.png,Cat\na.png,1,5,5,9,9\n")
    data = read_csv(csv_file, image_root=tmp_path, classes=["cat", "dog"])  # case-insensitive fallback for "Cat"
    assert [s.label for s in data] == [1, 0] and data.classes == ["cat", "dog"] and data.root == tmp_path
    assert boxes_of(data) == [[[1, 2, 3, 4], [5, 5, 9, 9]], []]


# ------------------------------------------------------------------------------------------ detection


def test_open_dataset_detects_format(tmp_path: Path) -> None:
    meta, images = wsol_tree(tmp_path / "w")
    assert open_dataset(meta, image_root=images).format == "wsol"
    assert len(open_dataset(meta / "image_ids.txt", images)) == 3
    with pytest.raises(DatasetError, match="pass image_root"):
        open_dataset(meta)
    root = synset_tree(tmp_path / "s")
    found = open_dataset(root)
    assert found.format == "ilsvrc" and boxes_of(found) == boxes_of(read_ilsvrc(root))
    image(tmp_path / "c" / "a.png", 4, 4)
    csv_file = write(tmp_path / "c" / "list.csv", "a.png,0,0,0,4,4\n")
    assert open_dataset(csv_file).format == "csv" and open_dataset(csv_file)[0].boxes.tolist() == [[0, 0, 4, 4]]
    # a .txt that is no wsolevaluation file is an ILSVRC labels file, images (and XML) beside it
    val = val_tree(tmp_path / "v")
    labels = write(val / "labels.txt", f"ILSVRC2012_val_00000002.JPEG {TENCH}\n")
    assert [s.label for s in open_dataset(labels, classes=[GOLDFISH, TENCH])] == [1]
    assert open_dataset(val, labels=labels, format="ilsvrc")[0].image_id == "ILSVRC2012_val_00000002.JPEG"
    with pytest.raises(DatasetError, match="cannot tell the data set format"):
        open_dataset(write(tmp_path / "x.json", "{}"))
    with pytest.raises(DatasetError, match="no such file or folder"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="format must be"):
        open_dataset(root, format="voc")


# ------------------------------------------------------------------------------------------- errors

ErrorCase = Callable[[Path], Callable[[], object]]


def _csv_case(rows: str, classes: list[str] | None = None) -> ErrorCase:
    def build(tmp: Path) -> Callable[[], object]:
        image(tmp / "a.png", 10, 10)
        image(tmp / "b.png", 10, 10)
        return lambda: read_csv(write(tmp / "data.csv", rows), classes=classes)

    return build


def _wsol_case(file: str, text: str | None) -> ErrorCase:
    def build(tmp: Path) -> Callable[[], object]:
        meta, images = wsol_tree(tmp)
        if text is None:
            (meta / file).unlink()
        else:
            write(meta / file, text)
        return lambda: read_wsol_metadata(meta, images)

    return build


def _xml_case(text: str) -> ErrorCase:
    def build(tmp: Path) -> Callable[[], object]:
        image(tmp / "r" / TENCH / "b.png", 10, 8)
        write(tmp / "r" / TENCH / "b.xml", text)
        return lambda: read_ilsvrc(tmp / "r")

    return build


def _voc_case(objects: list[tuple[str, object, object, object, object]], **kwargs: object) -> ErrorCase:
    def build(tmp: Path) -> Callable[[], object]:
        image(tmp / "r" / TENCH / "b.png", 10, 8)
        voc(tmp / "r" / TENCH / "b.xml", 10, 8, objects)
        return lambda: read_ilsvrc(tmp / "r", **kwargs)  # type: ignore[arg-type]

    return build


def _labels_case(text: str, classes: list[str] | None = None) -> ErrorCase:
    def build(tmp: Path) -> Callable[[], object]:
        root = val_tree(tmp)
        return lambda: read_ilsvrc(root, labels=write(tmp / "labels.txt", text), classes=classes)

    return build


ERRORS: dict[str, tuple[ErrorCase, str, int | None, str]] = {
    # name: (builder, file name, 1-based line or None, words of the message)
    "csv fields": (_csv_case("a.png,0,1,2,3,4\nb.png,0,1,2\n"), "data.csv", 2, "expected 6 fields"),
    "csv number": (
        _csv_case("path,class,x0,y0,x1,y1\na.png,0,1,2,3,4\na.png,0,1,two,3,4\n"),
        "data.csv",
        3,
        "not a number",
    ),
    "csv empty box": (_csv_case("a.png,0,5,2,5,4\n"), "data.csv", 1, "is empty"),
    "csv unknown name": (
        _csv_case("a.png,0,1,2,3,4\nb.png,zebra,1,2,3,4\n", ["cat", "dog"]),
        "data.csv",
        2,
        "unknown class 'zebra'",
    ),
    "csv name no classes": (_csv_case("a.png,dog,1,2,3,4\n"), "data.csv", 1, "no classes were given"),
    "csv id range": (_csv_case("a.png,2,1,2,3,4\n", ["cat", "dog"]), "data.csv", 1, "out of range for 2 classes"),
    "csv image missing": (_csv_case("a.png,0,1,2,3,4\nzz.png,0,1,2,3,4\n"), "data.csv", 2, "zz.png not found"),
    "csv two classes": (
        _csv_case("a.png,0,1,2,3,4\nb.png,1\na.png,1,1,2,3,4\n"),
        "data.csv",
        3,
        "on line 1; one class per image",
    ),
    "csv empty": (_csv_case("path,class,x0,y0,x1,y1\n"), "data.csv", None, "empty"),
    "wsol label fields": (
        _wsol_case("class_labels.txt", "val/a.png,5\nval/b.png\n"),
        "class_labels.txt",
        2,
        "'path,class_id'",
    ),
    "wsol label int": (_wsol_case("class_labels.txt", "val/a.png,five\n"), "class_labels.txt", 1, "not an integer"),
    "wsol number": (
        _wsol_case("localization.txt", "val/a.png,0,0,19,9\nval/b.png,2,x,7,5\n"),
        "localization.txt",
        2,
        "not a number",
    ),
    "wsol x1 < x0": (_wsol_case("localization.txt", "val/a.png,5,0,4,9\n"), "localization.txt", 1, "is empty"),
    "wsol outside": (
        _wsol_case("localization.txt", "val/a.png,0,0,19,9\nval/b.png,0,0,8,5\n"),
        "localization.txt",
        2,
        "extends past the 8 x 6 image",
    ),
    "wsol fields": (
        _wsol_case("localization.txt", "val/a.png,0,0,19\n"),
        "localization.txt",
        1,
        "4 comma-separated fields",
    ),
    "wsol mixed": (
        _wsol_case("localization.txt", "val/a.png,0,0,1,1\nval/b.png,m.png,\n"),
        "localization.txt",
        2,
        "either boxes or masks",
    ),
    "wsol no label": (
        _wsol_case("class_labels.txt", "val/a.png,5\nval/c.png,1\n"),
        "image_ids.txt",
        2,
        "'val/b.png' has no label",
    ),
    "wsol image missing": (
        _wsol_case("image_ids.txt", "val/a.png\nval/zz.png\n"),
        "image_ids.txt",
        2,
        "zz.png not found; check image_root",
    ),
    "wsol no box": (
        _wsol_case("localization.txt", "val/a.png,0,0,1,1\nval/c.png,0,0,1,1\n"),
        "image_ids.txt",
        2,
        "has no box or mask",
    ),
    "wsol no file": (_wsol_case("localization.txt", None), "test", None, "localization.txt is missing"),
    "wsol duplicate": (
        _wsol_case("image_ids.txt", "val/a.png\nval/b.png\nval/a.png\n"),
        "image_ids.txt",
        3,
        "listed twice (first on line 1)",
    ),
    "xml syntax": (
        _xml_case("<annotation>\n  <object>\n    <name>x</nam>\n"),
        "b.xml",
        3,
        "not well-formed XML (mismatched tag",
    ),
    "xml root": (_xml_case("<?xml version='1.0'?>\n<doc/>\n"), "b.xml", 2, "expected an <annotation> root"),
    "xml number": (
        _voc_case([(TENCH, 1, 1, 4, 4), (TENCH, 1, 1, "4,5", 4)]),
        "b.xml",
        22,
        "<xmax> is '4,5', not a number",
    ),
    "xml outside": (_voc_case([(TENCH, 1, 1, 11, 8)]), "b.xml", 10, "extends past the 10 x 8 image"),
    "xml empty box": (_voc_case([(TENCH, 5, 1, 3, 8)]), "b.xml", 10, "is empty"),
    "xml no bndbox": (
        _xml_case("<annotation>\n<object>\n<name>n01440764</name>\n</object>\n</annotation>\n"),
        "b.xml",
        2,
        "has no <bndbox>",
    ),
    "xml unknown wnid": (_voc_case([(TENCH, 1, 1, 4, 4)], classes=[SHARK]), TENCH, None, f"unknown class '{TENCH}'"),
    "labels fields": (
        _labels_case("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG\n"),
        "labels.txt",
        2,
        "expected 'relative/path label'",
    ),
    "labels image missing": (_labels_case("nope.JPEG 1\n"), "labels.txt", 1, "nope.JPEG not found"),
    "labels mixed": (
        _labels_case(f"ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG {TENCH}\n"),
        "labels.txt",
        2,
        "is a name but other labels are class ids",
    ),
    "labels range": (_labels_case("ILSVRC2012_val_00000001.JPEG 3\n", [TENCH, SHARK]), "labels.txt", 1, "out of range"),
    "no folder": (lambda tmp: lambda: read_ilsvrc(tmp / "missing"), "missing", None, "image folder not found"),
}
ERRORS["flat two classes"] = (
    lambda tmp: (
        image(tmp / "v" / "b.png", 10, 8),
        voc(tmp / "v" / "b.xml", 10, 8, [(TENCH, 1, 1, 4, 4), (SHARK, 1, 1, 4, 4)]),
        lambda: read_ilsvrc(tmp / "v"),
    )[-1],
    "b.xml",
    8,
    "objects of 2 classes",
)


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_file_and_line(tmp_path: Path, case: str) -> None:
    build, file_name, line, words = ERRORS[case]
    run = build(tmp_path)
    with pytest.raises(DatasetError) as info:
        run()
    message = str(info.value)
    assert words in message, message
    where = f"{file_name}:{line}: " if line is not None else f"{file_name}: "
    assert re.search(rf"[/\\]{re.escape(where)}", message) or message.startswith(where), message
    assert info.value.line == line and info.value.file is not None and info.value.file.name == file_name
    assert ";" in message  # problem; what to do


# ------------------------------------------------------------------------------------ ImageDataset


def normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor([(c / 255.0 - m) / s for c, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD)], dtype=torch.float32)


def test_image_dataset_values_and_sizes(tmp_path: Path) -> None:
    image(tmp_path / "flat.png", 8, 4, (255, 0, 128))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    Image.fromarray(noise[..., 0]).save(tmp_path / "gray.png")
    data = read_csv(write(tmp_path / "d.csv", "flat.png,0,0,0,8,4\nnoise.png,1,0,0,13,9\ngray.png,2\n"))
    dataset = ImageDataset(data, size=6)
    assert len(dataset) == 3
    x, index = dataset[0]
    assert index == 0 and x.shape == (3, 6, 6) and x.dtype == torch.float32
    # a constant 8x4 image resized (no crop) to 6x6 stays constant: ((255, 0, 128) / 255 - mean) / std per channel
    assert torch.allclose(x, normalised((255, 0, 128))[:, None, None].expand(3, 6, 6), atol=1e-6)
    # the WHOLE 13x9 image resized to 6x6 (bilinear, antialiased), then normalised: no crop
    full = torch.from_numpy(noise).permute(2, 0, 1).float()[None] / 255
    resized = F.interpolate(full, size=(6, 6), mode="bilinear", antialias=True, align_corners=False)[0]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(dataset[1][0], (resized - mean) / std, atol=1e-6)
    gray, _ = dataset[2]
    assert torch.allclose(
        (gray[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]), (gray[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1]), atol=1e-6
    )
    assert [dataset.original_size(i) for i in range(3)] == [(8, 4), (13, 9), (13, 9)]
    geometry = dataset.geometry(1)
    assert geometry.original == (9, 13) and geometry.size == (6, 6)
    assert geometry.map_to_original(torch.ones(1, 6, 6)).shape == (1, 9, 13)
    other = ImageDataset(data, size=4, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(other[0][0], torch.tensor([1.0, 0.0, 128 / 255])[:, None, None].expand(3, 4, 4), atol=1e-6)
    with pytest.raises(TypeError, match="LocalizationSet"):
        ImageDataset(data.samples)  # type: ignore[arg-type]


def test_image_dataset_keeps_stored_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.new("RGB", (8, 4), (200, 50, 50)).save(path, exif=exif)
    assert load_image(path).size == (4, 8)  # camlens.zoo applies EXIF orientation for single photos
    data = read_csv(write(tmp_path / "d.csv", "rotated.jpg,0,0,0,8,4\n"))
    dataset = ImageDataset(data, size=4)
    assert dataset.original_size(0) == (8, 4)  # annotations use the stored grid
    assert dataset[0][0].shape == (3, 4, 4)


def test_image_dataset_size_checks(tmp_path: Path) -> None:
    meta, images = wsol_tree(tmp_path)
    write(meta / "image_sizes.txt", "val/a.png,20,10\nval/b.png,9,6\n")  # b.png is really 8 x 6
    dataset = ImageDataset(read_wsol_metadata(meta, images), size=5)
    assert dataset.original_size(1) == (9, 6)  # the annotation's word, before loading
    with pytest.raises(DatasetError, match=r"b\.png: the image is 8 x 6 but its annotation says 9 x 6"):
        dataset[1]
    image(tmp_path / "c.png", 4, 4)
    outside = ImageDataset(read_csv(write(tmp_path / "d.csv", "c.png,0,0,0,5,4\n")))  # CSV: size unknown when read
    with pytest.raises(DatasetError, match=r"c\.png: a ground-truth box .* extends past the 4 x 4 image"):
        outside[0]


def test_dataloader_two_workers(tmp_path: Path) -> None:
    rows = []
    for i in range(5):
        image(tmp_path / f"{i}.png", 6 + i, 5, (40 * i, 10, 255 - 40 * i))
        rows.append(f"{i}.png,{i},0,0,{6 + i},5")
    dataset = ImageDataset(read_csv(write(tmp_path / "d.csv", "\n".join(rows))), size=8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert [tuple(b[0].shape) for b in batches] == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert batches[0][1].dtype == torch.int64
    for images, indices in batches:
        for x, i in zip(images, indices.tolist()):
            expected = normalised((40 * i, 10, 255 - 40 * i))[:, None, None].expand(3, 8, 8)
            assert torch.allclose(x, expected, atol=1e-6)
            assert dataset.original_size(i) == (6 + i, 5)
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_skip_bad_markers_and_collate(tmp_path: Path) -> None:
    """skip_bad=True: an unreadable image and one its box does not fit become Skipped markers, which collate
    leaves out of the tensors and lists in Batch.skipped, also through DataLoader workers (pickled batches)."""
    for i in range(3):
        image(tmp_path / f"{i}.png", 6, 5, (40 * i, 10, 20))
    write(tmp_path / "broken.png", "not a PNG")
    rows = ["0.png,0,0,0,6,5", "broken.png,1", "1.png,1,0,0,7,5", "2.png,2"]
    data = read_csv(write(tmp_path / "d.csv", "\n".join(rows)))
    with pytest.raises(DatasetError, match=r"broken\.png: not an image file PIL can read; remove it"):
        ImageDataset(data, size=4)[1]
    dataset = ImageDataset(data, size=4, skip_bad=True)
    broken = dataset[1]
    assert broken == Skipped(
        1, str(tmp_path / "broken.png"), "not an image file PIL can read; remove it from the data set or replace it"
    )
    assert isinstance(dataset[2], Skipped) and dataset[2].reason.startswith(
        "a ground-truth box [[0.0, 0.0, 7.0, 5.0]] extends past the 6 x 5 image (1.png)"
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[0], [3]]
    assert [[s.index for s in b.skipped] for b in batches] == [[1], [2]]
    assert [b.sizes for b in batches] == [[(6, 5)], [(6, 5)]]  # read in the worker that decoded the image
    images, _ = batches[1]
    assert torch.allclose(images[0], normalised((80, 10, 20))[:, None, None].expand(3, 4, 4), atol=1e-6)
    empty = collate([dataset[1], dataset[2]])
    assert empty[0].numel() == 0 and empty[1].tolist() == [] and len(empty.skipped) == 2
    assert pickle.loads(pickle.dumps(empty)).skipped == empty.skipped


def test_over_budget_images(tmp_path: Path) -> None:
    """max_pixels is checked from the header: 6 x 5 = 30 pixels fits a budget of 30, not one of 29."""
    image(tmp_path / "a.png", 6, 5)
    data = read_csv(write(tmp_path / "d.csv", "a.png,0\n"))
    assert ImageDataset(data, size=4, max_pixels=30)[0][0].shape == (3, 4, 4)
    assert ImageDataset(data, max_pixels=30).original_size(0) == (6, 5)
    over = r"a\.png: 6 x 5 = 30 pixels is over the budget of 29"
    with pytest.raises(DatasetError, match=over):
        ImageDataset(data, max_pixels=29)[0]
    with pytest.raises(DatasetError, match=over):
        ImageDataset(data, max_pixels=29).original_size(0)
    with pytest.raises(ValueError, match="max_pixels must be >= 1 or None"):
        ImageDataset(data, max_pixels=0)


def test_sample_value_semantics() -> None:
    a = Sample(Path("/x.png"), 1, np.array([[0, 0, 2, 2]]))  # int boxes become float64
    b = Sample(Path("/x.png"), 1, np.array([[0.0, 0.0, 2.0, 2.0]]))
    assert a == b and hash(a) == hash(b) and a != Sample(Path("/x.png"), 1, np.zeros((0, 4)))
    assert a.boxes.dtype == np.float64 and a.boxes.shape == (1, 4)
    with pytest.raises(ValueError):
        a.boxes[0, 0] = 5  # read-only
    m = Sample(Path("/x.png"), 0, np.zeros((0, 4)), mask=Path("/m.png"))
    assert m.masks == (Path("/m.png"),)


def test_the_compatibility_module_names_the_same_objects() -> None:
    """camlens.datasets (the old single module) re-exports camlens.data's public names, the same objects."""
    import camlens.data
    import camlens.datasets

    assert camlens.datasets.__all__ == camlens.data.__all__
    assert all(getattr(camlens.datasets, n) is getattr(camlens.data, n) for n in camlens.data.__all__)


def test_load_image_formats_refuses_other_formats_before_decoding(tmp_path: Path) -> None:
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    Image.fromarray(pixels).save(tmp_path / "a.bmp")
    Image.fromarray(pixels).save(tmp_path / "a.png")
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.bmp")), pixels)  # every format by default
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.png", formats=("PNG",))), pixels)
    with pytest.raises(ValueError, match=r"a\.bmp: not an image of an accepted format \(PNG, JPEG\)"):
        load_image(tmp_path / "a.bmp", formats=("PNG", "JPEG"))
