"""Pictures (camlens.viz): colours, overlays and boxes at known pixels, and the figures of results
(camlens.viz.plots) checked by their size in pixels (figsize x dpi) and the colour of cells drawn by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camlens import viz
from camlens.metrics.sanity import SanityResult
from camlens.viz.plots import _columns

pytest.importorskip("matplotlib")

JET_0 = (0, 0, 127.5)  # matplotlib's jet at 0: (0, 0, 0.5)
JET_1 = (127.5, 0, 0)  # and at 1: (0.5, 0, 0)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def test_public_names_of_the_package() -> None:
    from camlens.viz import overlays, plots

    for name in ("colorize", "draw_box", "grid", "overlay", "pixel_image"):
        assert getattr(viz, name) is getattr(overlays, name)
    for name in ("example_picture", "plot_curves", "plot_sanity"):
        assert getattr(viz, name) is getattr(plots, name)


def test_importing_metrics_and_viz_loads_no_matplotlib(tmp_path: Path) -> None:
    # metrics return numbers; viz imports matplotlib only when it draws, and never pyplot
    code = (
        "import sys\n"
        "import camlens.metrics.sanity, camlens.metrics.similarity, camlens.metrics.localization, camlens.viz\n"
        "assert 'matplotlib' not in sys.modules, 'imported at module level'\n"
        "camlens.viz.plot_curves({'m': {'deletion': {'fractions': [0, 1], 'scores': [1, 0]}}}, sys.argv[1])\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------------
# colours, overlays, boxes


def test_colorize_and_overlay_by_hand() -> None:
    # 256 levels floor(256 v): 0 -> jet's first entry (0, 0, 0.5 * 255 + 0.5 -> 128), 1 -> its last (128, 0, 0)
    np.testing.assert_array_equal(viz.colorize(np.array([[0.0, 1.0]])), [[[0, 0, 128], [128, 0, 0]]])
    # blended half and half over a black photo: (0, 0, 64)
    photo = Image.new("RGB", (4, 3))
    blended = np.asarray(viz.overlay(photo, np.zeros((3, 4))))
    np.testing.assert_array_equal(blended, np.broadcast_to([0, 0, 64], (3, 4, 3)))
    with pytest.raises(ValueError, match="differ in size"):
        viz.overlay(photo, np.zeros((4, 4)))


def test_draw_box_is_end_exclusive() -> None:
    # box [2, 3, 10, 12) on a 20 x 20 image: columns 2..9, rows 3..11; its outline is 2 px wide, inside the box
    image = np.asarray(viz.draw_box(Image.new("RGB", (20, 20)), [2, 3, 10, 12], None, color="#00ff66"))
    green, black = [0, 255, 102], [0, 0, 0]
    for x, y in [(2, 7), (3, 7), (8, 7), (9, 7), (5, 3), (5, 4), (5, 10), (5, 11)]:
        assert image[y, x].tolist() == green, (x, y)
    for x, y in [(1, 7), (10, 7), (5, 2), (5, 12), (4, 7), (7, 9)]:  # outside, and the interior
        assert image[y, x].tolist() == black, (x, y)


def test_example_picture_by_hand() -> None:
    # black 256 x 128 photo, zero map: (0, 0, 64) everywhere but the boxes; no resize at width 256
    photo = Image.new("RGB", (256, 128))
    picture = viz.example_picture(photo, np.zeros((128, 256)), [[10.4, 40, 100, 90]], [120, 30, 200, 110], "x")
    assert picture.size == (256, 128)
    px = np.asarray(picture)
    assert px[60, 10].tolist() == [255, 51, 51]  # the ground-truth box's left edge (10.4 rounds to 10), red
    assert px[60, 120].tolist() == [0, 255, 102]  # the predicted box's left edge, green
    assert px[60, 50].tolist() == [0, 0, 64]  # inside the ground truth: the blended map
    assert px[1, 1].tolist() == [0, 0, 0]  # the label's dark band
    # a 512 x 256 photo comes back 256 wide, its aspect ratio kept
    assert viz.example_picture(Image.new("RGB", (512, 256)), np.zeros((256, 512)), [], None, "x").size == (256, 128)
    # a 48 x 48 digit is resized to 256 px before drawing: its box [8, 8, 24, 24) lands at [43, 43, 128, 128)
    small = viz.example_picture(Image.new("RGB", (48, 48)), np.zeros((48, 48)), [[8, 8, 24, 24]], None, "x")
    px = np.asarray(small)
    assert small.size == (256, 256) and px[80, 43].tolist() == [255, 51, 51] and px[80, 40].tolist() == [0, 0, 64]


# ---------------------------------------------------------------------------------------------------
# the sanity check's figure


def _result(layers: list[str], maps: np.ndarray | None, method: str = "gradcam") -> SanityResult:
    steps = np.linspace(0.9, 0.1, len(layers))[:, None]
    return SanityResult(
        method, "cascading", layers, steps, steps, steps, maps=maps, layer="conv", position=["downstream"] * len(layers)
    )


def test_columns_of_coarser_steps() -> None:
    layers = ["fc", "features.6", "features.3+features.4", "features.0+features.1"]
    # a step that randomises several reference blocks is drawn at the last of them
    coarse = _result(["fc+features.6", "features.3+features.4+features.0+features.1"], None)
    assert _columns(layers, coarse) == [1, 3]
    assert _columns(layers, _result(layers, None)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not among the blocks"):
        _columns(layers, _result(["conv9"], None, "x"))


def test_plot_sanity_size_and_map_cells(tmp_path: Path) -> None:
    # one method, 2 steps, maps of one sample: the original all 1, after "fc" all 0, after "conv" all 1.
    maps = np.stack([np.ones((1, 12, 12)), np.zeros((1, 12, 12)), np.ones((1, 12, 12))])
    result = _result(["fc", "conv"], maps)
    path = viz.plot_sanity([result], tmp_path / "sub" / "sanity.png")
    assert path == tmp_path / "sub" / "sanity.png"
    image = _rgb(path)
    # layout (inches): 13 wide; 0.5 title + 2.4 curves + 1 ticks + 0.95 map labels + 1 tile + 0.1 = 5.95
    # high; at 110 dpi 1430 x 654.5, truncated to 654 by the Agg canvas
    assert image.shape == (654, 1430, 3)
    # the tiles: 3 columns from x = 1 in to 4 in, rows from 4.85 in to 5.85 in. With wspace 0.05 a cell is
    # 3 / 3.1 = 0.968 in wide, so the centres are at 1 + 0.484 + c * 1.016 in = 163, 275, 387 px; y 5.35 in =
    # 588 px. Tiles are drawn with jet on [0, 1]: 1 is (0.5, 0, 0), 0 is (0, 0, 0.5).
    for x, colour in [(163, JET_1), (275, JET_0), (387, JET_1)]:
        np.testing.assert_allclose(image[588, x], colour, atol=1)
        np.testing.assert_allclose(image[560:617:8, x - 25 : x + 26 : 10], np.broadcast_to(colour, (8, 6, 3)), atol=1)
    # without kept maps: no labels, no tiles: 0.5 + 2.4 + 1 + 0.1 = 4 in high, 1430 x 440
    assert _rgb(viz.plot_sanity([_result(["fc", "conv"], None)], tmp_path / "curves_only.png")).shape == (440, 1430, 3)


def test_plot_sanity_draws_coarser_results_at_their_columns(tmp_path: Path) -> None:
    # two methods; the second checked on one step "fc+conv", drawn in the column of "conv" (the last).
    fine = _result(["fc", "conv"], np.stack([np.ones((1, 12, 12)), np.ones((1, 12, 12)), np.ones((1, 12, 12))]))
    coarse = _result(["fc+conv"], np.stack([np.zeros((1, 12, 12)), np.zeros((1, 12, 12))]), "other")
    image = _rgb(viz.plot_sanity([fine, coarse], tmp_path / "both.png"))
    # 13 in wide (legend margin 1.6 in); two rows of tiles: 5.95 + 1 = 6.95 in high -> 1430 x 764.5 -> 764
    assert image.shape == (764, 1430, 3)
    # rows from 4.85 in: cells 1 / 2.05 in high with hspace 0.05 -> centres at 5.094 and 6.119 in
    # (560 and 673 px); columns as above (163, 275, 387 px). Row 2: original, nothing at "fc", "fc+conv" at "conv".
    np.testing.assert_allclose(image[560, [163, 275, 387]], [JET_1] * 3, atol=1)
    np.testing.assert_allclose(image[673, [163, 387]], [JET_0] * 2, atol=1)
    assert image[673, 275].tolist() == [255, 255, 255]  # the empty cell
    with pytest.raises(ValueError, match="at least one"):
        viz.plot_sanity([], tmp_path / "none.png")


# ---------------------------------------------------------------------------------------------------
# faithfulness curves


def test_plot_curves_size_and_colours(tmp_path: Path) -> None:
    line = {"fractions": [0.0, 0.5, 1.0], "scores": [1.0, 0.4, 0.0]}
    other = {"fractions": [0.0, 0.5, 1.0], "scores": [0.0, 0.6, 1.0]}  # crosses ``line`` once
    curves = {"gradcam": {"deletion": line, "insertion": line}, "scorecam": {"deletion": other}}
    image = _rgb(viz.plot_curves(curves, tmp_path / "curves.png"))
    assert image.shape == (374, 2 * 462, 3)  # two panels of 4.2 x 3.4 in at 110 dpi
    # lines in matplotlib's default cycle: C0 (31, 119, 180) for gradcam, C1 (255, 127, 14) for scorecam;
    # scorecam has no insertion curve, so C1 appears in the left panel only (and the legend, right panel)
    c0 = (image == [31, 119, 180]).all(-1)
    c1 = (image == [255, 127, 14]).all(-1)
    assert c0[:, :462].sum() > 50 and c0[:, 462:].sum() > 50
    assert c1[:, :462].sum() > 50
    assert _rgb(viz.plot_curves({"m": {"road_morf": line}}, tmp_path / "one.png")).shape == (374, 462, 3)
    with pytest.raises(ValueError, match="no curve"):
        viz.plot_curves({"m": {}}, tmp_path / "none.png")


def test_signed_map_is_centred_on_zero_and_keeps_the_layer_cells() -> None:
    from camlens.viz import colorize, signed_map

    picture = np.asarray(signed_map(np.array([[-2.0, 0.0], [1.0, 2.0]]), cell=32))
    assert picture.shape == (64, 64, 3)  # 2x2 cells of 32 pixels
    # value / (2 max|v|) + 0.5: -2 -> 0 (deepest blue), 0 -> 0.5 (white), 1 -> 0.75, 2 -> the top colour
    expected = colorize(np.array([[0.0, 0.5], [0.75, 255 / 256]]), "RdBu_r")
    for row in range(2):
        for col in range(2):
            assert np.array_equal(picture[row * 32 + 5, col * 32 + 7], expected[row, col])
            assert np.array_equal(picture[row * 32 + 31, col * 32], expected[row, col])  # one colour per cell
    # an all-zero map is all white (0.5), not a division by zero
    flat = np.asarray(signed_map(np.zeros((3, 3))))
    assert (flat == colorize(np.array([[0.5]]), "RdBu_r")[0, 0]).all()
    # a large map keeps one pixel per value at most 512 a side: 600 x 600 stays 600 x 600
    assert signed_map(np.ones((600, 600))).size == (600, 600)
