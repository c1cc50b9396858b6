"""The report page of a run folder, built by hand: hostile values escaped, files confined to the folder,
bad lines skipped and listed, old run folders still shown. No model is run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from camlens.report import build_report, report_problems, write_report

OUTSIDE = "file outside the run folder, not shown"


def png(path: Path, size: tuple[int, int] = (6, 4)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def manifest(**changes: Any) -> dict[str, Any]:
    base = {
        "format": "camlens.run/1",
        "camlens": "0.1.0",
        "torch": "2.3.0",
        "command": ["camlens", "explain", "cat.png", "--topk", "2"],
        "model": "efficientnet_lite0",
        "weights": "w.pth",
        "weights_sha256": "0123456789abcdef" * 4,
        "method": "gradcam",
        "layer": "_swish@1",
        "threshold": 0.2,
        "started": "2024-05-01T10:00:00",
        "finished": "2024-05-01T10:00:09",
        "images": 1,
        "failed": 0,
        "files": [],
    }
    return {**base, **changes}


def explanation(class_id: Any, label: str, files: dict[str, str], method: str = "gradcam", **more: Any) -> dict:
    return {
        "class_id": class_id,
        "label": label,
        "logit": 9.1,
        "probability": 0.61,
        "method": method,
        "layer": "_swish@1",
        "box": [1, 0, 5, 3],
        "files": files,
        **more,
    }


def record(name: str, explanations: list[dict], photo: str | None = None, **more: Any) -> dict:
    return {
        "source": f"/data/in/{name}.png",
        "name": name,
        "size": [6, 4],
        "photo": photo if photo is not None else f"{name}/photo.jpg",
        "predictions": [{"class_id": 285, "label": "Egyptian cat", "logit": 9.1, "probability": 0.61}],
        "explanations": explanations,
        **more,
    }


def make_run(tmp_path: Path, lines: list[Any], man: dict[str, Any] | None = None) -> Path:
    """RUN/results.jsonl from ``lines`` (a dict is dumped, a str written as is) and RUN/manifest.json."""
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (run / "results.jsonl").write_text(text)
    if man is not None:
        (run / "manifest.json").write_text(json.dumps(man))
    return run


def srcs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def simple(tmp_path: Path, **more: Any) -> tuple[Path, dict]:
    """One image ``cat`` with its photo and one gradcam overlay, both real files in the run folder."""
    run = tmp_path / "run"
    png(run / "cat" / "photo.jpg")
    png(run / "cat" / "cat_gradcam_285.png")
    rec = record("cat", [explanation(285, "Egyptian cat", {"overlay": "cat/cat_gradcam_285.png"})], **more)
    return run, rec


def test_a_script_label_appears_only_escaped(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    run, rec = simple(tmp_path)
    rec["predictions"][0]["label"] = hostile
    rec["explanations"][0]["label"] = hostile
    rec["explanations"][0]["method"] = '"><script>alert(2)</script>'
    rec["warnings"] = [hostile]
    make_run(tmp_path, [rec], manifest(model=hostile, command=["camlens", hostile]))
    page = write_report(run, title=hostile).read_text()
    assert page.count("<script>") == 1  # the page's own check, nothing else
    assert "alert(1)</script>" not in page and "alert(2)" not in page.replace("alert(2)&lt;", "")
    # title, h1, manifest model, command, prediction, cell label, overlay alt, warning
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 8
    assert "&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page


def test_a_string_class_id_makes_the_record_invalid_and_listed(tmp_path: Path) -> None:
    run, good = simple(tmp_path)
    bad = json.loads(json.dumps(good))
    bad["name"] = "dog"
    bad["explanations"][0]["class_id"] = "<img onerror=alert(1) src=x>"
    make_run(tmp_path, [good, bad], manifest())
    report = build_report(run)
    assert report.problems == ("results.jsonl:2: skipped: explanations[0].class_id is not an integer",)
    assert report.images == 1
    page = report.path.read_text()
    assert "onerror" not in page and "dog" not in page
    assert "<li>results.jsonl:2: skipped: explanations[0].class_id is not an integer</li>" in page
    assert report_problems(run) == list(report.problems)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"box": [1, 2, 3]}, "explanations[0].box is not 4 integers or null"),
        ({"box": [1, 2, 3.5, 4]}, "explanations[0].box is not 4 integers or null"),
        ({"box": [1, 2, 3, True]}, "explanations[0].box is not 4 integers or null"),
        ({"box": [1, 2, 3, 10**30]}, "explanations[0].box is not 4 integers or null"),
        ({"logit": "9.1"}, "explanations[0].logit is not a finite number"),
        ({"probability": 1.5}, "explanations[0].probability is not a probability in [0, 1]"),
        ({"files": ["cat/x.png"]}, "explanations[0].files is not an object"),
        ({"files": {"overlay": 3}}, "explanations[0].files.overlay is not a string"),
    ],
)
def test_each_schema_check_names_the_field(tmp_path: Path, change: dict, problem: str) -> None:
    run, good = simple(tmp_path)
    bad = json.loads(json.dumps(good))
    bad["name"] = "bad"
    bad["explanations"][0].update(change)
    make_run(tmp_path, [good, bad])
    assert build_report(run).problems == (f"results.jsonl:2: skipped: {problem}",)


def test_non_finite_and_wrong_top_level_values_are_skipped(tmp_path: Path) -> None:
    run, good = simple(tmp_path)
    lines = [
        good,
        json.dumps(good).replace('"logit": 9.1', '"logit": 1e400'),  # parsed as inf
        json.dumps(good).replace('"logit": 9.1', '"logit": NaN'),
        {**good, "size": [0, 4]},
        {**good, "warnings": "oops"},
        [1, 2],
        {"size": [6, 4]},
        "",  # blank lines are not problems
        "1" * 5000,  # longer than Python's integer-string limit
    ]
    make_run(tmp_path, lines)
    problems = build_report(run).problems
    assert problems[:6] == (
        "results.jsonl:2: skipped: predictions[0].logit is not a finite number",
        "results.jsonl:3: skipped: predictions[0].logit is not a finite number",
        "results.jsonl:4: skipped: size is not 2 positive integers",
        "results.jsonl:5: skipped: warnings is not a list of strings",
        "results.jsonl:6: skipped: record is not an object",
        "results.jsonl:7: skipped: record names no image (no source)",
    )
    assert problems[6].startswith("results.jsonl:9: not a JSON line (ValueError: ") and len(problems) == 7


def test_files_outside_the_run_folder_are_not_linked(tmp_path: Path) -> None:
    secret = png(tmp_path / "secret.png")
    run, _ = simple(tmp_path)
    (run / "cat" / "link.png").symlink_to(secret)
    (run / "escape").symlink_to(tmp_path)  # a folder symlink out of RUN
    inside = png(run / "cat" / "inside.png")
    fields = [
        "../secret.png",
        "/etc/passwd",
        "cat/link.png",
        "escape/secret.png",
        str(inside),  # absolute, even though inside: the new format writes relative paths
        "javascript:alert(1)",
        "cat/../../secret.png",
    ]
    explanations = [explanation(k, f"class {k}", {"overlay": f}) for k, f in enumerate(fields)]
    rec = record("cat", explanations, photo="../secret.png", grid="/etc/passwd")
    make_run(tmp_path, [rec], manifest())
    report = build_report(run)
    page = report.path.read_text()
    assert srcs(page) == []
    assert "secret" not in page and "passwd" not in page.replace("/etc/passwd</", "")
    assert "href=" not in page
    assert page.count(f"<div class='note'>{OUTSIDE}</div>") == 1 + len(fields)  # photo, overlays; grid listed
    assert page.count("<li>results.jsonl:1: ") == 2 + len(fields)
    assert f"results.jsonl:1: photo: {OUTSIDE}" in report.problems
    assert f"results.jsonl:1: grid: {OUTSIDE}" in report.problems
    for k in range(len(fields)):
        assert f"results.jsonl:1: explanations[{k}].files.overlay: {OUTSIDE}" in report.problems


def test_a_malformed_line_is_listed_with_its_number_and_the_rest_renders(tmp_path: Path) -> None:
    run, good = simple(tmp_path)
    make_run(tmp_path, ['{"source": "a.png", "explanations": [', good, "\xff not utf-8"], manifest())
    (run / "results.jsonl").write_bytes((run / "results.jsonl").read_bytes().replace(b"\xc3\xbf", b"\xff"))
    report = build_report(run)
    assert report.problems == (
        "results.jsonl:1: not a JSON line (Expecting value at column 38)",
        "results.jsonl:3: not a JSON line (not UTF-8)",
    )
    page = report.path.read_text()
    assert "results.jsonl:1: not a JSON line (Expecting value at column 38)" in page
    assert srcs(page) == ["cat/photo.jpg", "cat/cat_gradcam_285.png"]


def test_no_results_or_no_valid_line_is_one_value_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(ValueError, match=r"run: no results.jsonl here; run `camlens explain"):
        write_report(run)
    with pytest.raises(ValueError, match="not a run folder"):
        write_report(tmp_path / "nothing")
    make_run(tmp_path, ["{oops", {"source": 3}])
    with pytest.raises(ValueError, match=r"no valid record \(results.jsonl:1: not a JSON line") as err:
        write_report(run)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="no valid record"):
        report_problems(run)
    assert not (run / "index.html").exists()


def test_images_on_the_page_counted_by_hand(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for f in ["cat/photo.jpg", "cat/g_285.png", "cat/g_281.png", "cat/gg_285.png", "cat/gg_285_px.png"]:
        png(run / f)
    png(run / "cat/gg_281.png")
    png(run / "cat/gg_281_px.png")
    png(run / "my dog/photo #1.jpg")
    cat = record(
        "cat",
        [
            explanation(285, "Egyptian cat", {"overlay": "cat/g_285.png", "map": "cat/g_285.npy"}),
            explanation(281, "tabby", {"overlay": "cat/g_281.png"}),
            explanation(285, "Egyptian cat", {"overlay": "cat/gg_285.png", "pixels": "cat/gg_285_px.png"}, "gg"),
            explanation(281, "tabby", {"overlay": "cat/gg_281.png", "pixels": "cat/gg_281_px.png"}, "gg"),
        ],
        grid="cat/g_top2.png",  # not written: neither linked nor counted
    )
    dog = record("my dog", [explanation(1, "goldfish", {"overlay": "my dog/missing.png"})], photo="my dog/photo #1.jpg")
    make_run(tmp_path, [cat, dog], manifest(images=2))
    report = build_report(run)
    page = report.path.read_text()
    # cat: photo + 2 classes x (gradcam overlay + guided overlay and pixels) = 7; dog: photo, overlay missing
    assert page.count("<img") == 7 + 1
    assert srcs(page) == [
        "cat/photo.jpg",
        "cat/g_285.png",
        "cat/gg_285.png",
        "cat/gg_285_px.png",
        "cat/g_281.png",
        "cat/gg_281.png",
        "cat/gg_281_px.png",
        "my%20dog/photo%20%231.jpg",
    ]
    assert report.problems == (
        "results.jsonl:1: grid: file not found in the run folder, not shown",
        "results.jsonl:2: explanations[0].files.overlay: file not found in the run folder, not shown",
    )
    assert "Egyptian cat (285) logit 9.10 · p 0.610" in page and "box [1, 0, 5, 3]" in page
    assert "score" not in page
    assert report.images == 2 and "2 image(s)" in page


def test_the_latest_record_of_an_image_method_and_class_wins(tmp_path: Path) -> None:
    run, first = simple(tmp_path)
    png(run / "cat" / "again.png")
    second = record("cat", [explanation(285, "Egyptian cat", {"overlay": "cat/again.png"}, logit=3.0)])
    make_run(tmp_path, [first, second])
    page = write_report(run).read_text()
    assert srcs(page) == ["cat/photo.jpg", "cat/again.png"] and "logit 3.00 · p 0.610" in page


def test_the_manifest_is_shown_and_an_interrupted_run_says_so(tmp_path: Path) -> None:
    run, rec = simple(tmp_path)
    make_run(tmp_path, [rec], manifest())
    page = write_report(run).read_text()
    for text in ["efficientnet_lite0", "sha256 0123456789ab<", "_swish@1", "0.2", "camlens 0.1.0, torch 2.3.0"]:
        assert text in page
    assert "2024-05-01T10:00:09" in page and "(run interrupted)" not in page
    assert "camlens explain cat.png --topk 2" in page
    make_run(tmp_path, [rec], manifest(finished=None, weights=None, weights_sha256=None, threshold="high"))
    report = build_report(run)
    page = report.path.read_text()
    assert "(run interrupted)" in page and "none given (the model's default)" in page
    assert report.problems == ("manifest.json: threshold is not a finite number; not shown",)


def test_an_old_run_folder_renders(tmp_path: Path) -> None:
    run = tmp_path / "run"
    photo = png(run / "chelsea.png")
    overlay = png(run / "chelsea" / "chelsea_gradcam_285.png")
    old = {
        "path": str(photo),
        "size": [6, 4],
        "predictions": [{"class_id": 285, "label": "Egyptian cat", "score": 0.61}],
        "explanations": [
            {
                "class_id": 285,
                "label": "Egyptian cat",
                "score": 0.61,
                "method": "gradcam",
                "layer": "_swish@1",
                "box": None,
                "files": {"overlay": str(overlay), "map": str(overlay.with_suffix(".npy"))},
            }
        ],
    }
    elsewhere = {**old, "path": str(png(tmp_path / "elsewhere.png"))}  # the input, outside RUN: not linked
    make_run(tmp_path, [old, elsewhere])
    report = build_report(run)
    page = report.path.read_text()
    assert "no manifest" in page and report.problems == ()
    assert srcs(page) == ["chelsea.png", "chelsea/chelsea_gradcam_285.png", "chelsea/chelsea_gradcam_285.png"]
    assert "Egyptian cat (285) p 0.610" in page and "box none" in page and "score" not in page
    assert "no photo in the run folder" in page and "elsewhere" in page  # named, not linked


def test_an_index_html_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    run, rec = simple(tmp_path)
    make_run(tmp_path, [rec])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (run / "index.html").symlink_to(victim)
    page = write_report(run)
    assert victim.read_text() == "keep" and not page.is_symlink() and "<img" in page.read_text()
    assert [p.name for p in run.iterdir() if p.name.startswith(".index-")] == []


def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    from tests.browser import rendered_dom

    run, rec = simple(tmp_path)
    png(run / "cat" / "px.png")
    rec["explanations"].append(
        explanation(285, "Egyptian cat", {"overlay": "cat/px.png", "pixels": "cat/px.png"}, "gg")
    )
    rec["predictions"][0]["label"] = "<script>document.title='owned'</script>"
    make_run(tmp_path, [rec], manifest())
    page = write_report(run)
    dom = rendered_dom(page, tmp_path / "profile")
    match = re.search(r'data-images="(\d+)" data-rendered="(\d+)"', dom)
    assert match is not None, dom[:500]
    assert match.group(1) == match.group(2) == "4"  # photo, gradcam overlay, guided overlay and pixels
    assert "owned" not in re.search(r"<title>(.*?)</title>", dom).group(1)  # type: ignore[union-attr]
