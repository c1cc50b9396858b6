"""The VQA and captioning benchmarks (camlens.bench.vqa / .caption): data, wrappers, pointing tallies, the CLI.

Small versions only (tiny subsets, one epoch): the plumbing and every number checked against a hand-made
case or an independent computation, never a trained-accuracy threshold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from camlens.bench import _common, caption, vqa
from camlens.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _grad_cam(features: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Grad-CAM written out (Selvaraju et al., eq. 1-2): ReLU(sum_k mean(dS/dA_k) A_k), one map per score."""
    grads = torch.autograd.grad(score.sum(), features)[0]
    return torch.relu((grads.mean(dim=(2, 3), keepdim=True) * features).sum(1))


# --------------------------------------------------------------------------------------------- VQA


def test_shape_masks_by_hand() -> None:
    image = torch.zeros(1, 3, 8, 8)
    image[0, :] = torch.tensor([0.9, 0.8, 0.85])[:, None, None]  # background
    image[0, :, 2:5, 3:6] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # a blue square
    background, blue = image[0, :, 0, 0].clone(), torch.tensor([0.0, 0.0, 1.0])
    image[0, :, 5, 3] = background + 0.51 * (blue - background)  # anti-aliased rim: past half coverage
    image[0, :, 5, 4] = background + 0.49 * (blue - background)  # short of half
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[2:5, 3:6] = True
    want[5, 3] = True
    assert torch.equal(vqa.shape_masks(image)[0], want)


def test_question_words_and_types() -> None:
    assert vqa.tokens("Is there not a blue shape?") == ["is", "there", "not", "a", "blue", "shape"]
    assert [vqa.kind(a) for a in ("circle", "yes", "no", "teal")] == ["shape", "yes/no", "yes/no", "color"]


@pytest.fixture(scope="module")
def small_vqa() -> tuple[vqa.VQASet, vqa.VQASet]:
    pytest.importorskip("easy_vqa")
    train = vqa.load("train", 24)
    return train, vqa.load("test", 6, vocab=train.vocab)


def test_load_reads_every_question_of_the_chosen_images(small_vqa: tuple[vqa.VQASet, vqa.VQASet]) -> None:
    import easy_vqa

    train, test = small_vqa
    texts, answers, ids = easy_vqa.get_test_questions()
    mine = [(t, a) for t, a, i in zip(texts, answers, ids) if i < 6]
    assert [(t, test.answer_names[int(a)]) for t, a in zip(test.texts, test.answers)] == mine
    assert test.image_ids == list(range(6)) and test.images.shape == (6, 3, 64, 64)
    row = 3
    words = vqa.tokens(test.texts[row])
    assert test.questions[row].sum() == sum(w in train.vocab for w in words)
    # one shape per image: the mask is one connected region
    from scipy import ndimage

    assert all(ndimage.label(m.numpy())[1] == 1 for m in test.masks)


def test_explain_answers_is_grad_cam_of_the_answer_with_its_own_question(
    small_vqa: tuple[vqa.VQASet, vqa.VQASet],
) -> None:
    train, _ = small_vqa
    model = vqa.VQANet(len(train.vocab), len(train.answer_names), width=8, seed=1)
    rows = torch.tensor([0, 5, 9])
    images, questions = train.images[train.image_of[rows]], train.questions[rows]
    answers = torch.tensor([2, 7, 4])
    exp = vqa.explain_answers(model, images, questions, answers)
    features = model.image(images).detach().requires_grad_(True)
    logits = model.answer(features, questions)
    want = _grad_cam(features, logits.gather(1, answers[:, None])[:, 0])
    torch.testing.assert_close(exp.raw[:, 0].clamp_min(0), want, rtol=1e-4, atol=1e-6)
    # other questions give other maps: the question reaches the model
    other = vqa.explain_answers(model, images, questions.roll(1, 0), answers)
    assert not torch.allclose(other.raw, exp.raw)
    assert model.training is False and not any(p.grad is not None for p in model.parameters())


def test_vqa_pointing_tallies_agree_with_the_peaks(small_vqa: tuple[vqa.VQASet, vqa.VQASet]) -> None:
    train, test = small_vqa
    model = vqa.VQANet(len(train.vocab), len(train.answer_names), width=8, seed=0)
    predicted = vqa.predict(model, test)
    trials = vqa.point(model, test, predicted, batch_size=16, progress=False)
    masks = test.masks[test.image_of].numpy()
    peak = trials["peaks"][:, 0]
    on = masks[np.arange(len(test)), peak[:, 0], peak[:, 1]]
    np.testing.assert_array_equal(trials["0px"]["pred"][~trials["flat"]], on[~trials["flat"]])
    np.testing.assert_array_equal(trials["0px"]["centre"], masks[:, 32, 32])
    np.testing.assert_allclose(trials["0px"]["random"], masks.mean(axis=(1, 2)))
    # 4 px: the centre hits when a shape pixel lies within 4 px of it
    near = [np.hypot(*(np.argwhere(m) - [32, 32]).T).min() <= 4 for m in masks]
    np.testing.assert_array_equal(trials["4px"]["centre"], near)


def test_bench_vqa_cli_writes_results_inside_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("easy_vqa")
    out = tmp_path / "vqa"
    flags = ["--out", str(out), "--seeds", "3", "--train", "30", "--test", "8", "--epochs", "1"]
    assert main(["bench", "vqa", *flags]) == 0
    assert "| answer accuracy |" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqa"]
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "table.md", "vqa_examples.png"]
    results = json.loads((out / "results.json").read_text())
    assert results["command"][:3] == ["camlens", "bench", "vqa"] and results["config"]["seeds"] == [3]
    record = results["seeds"]["3"]
    n = results["config"]["test_questions"]
    assert record["test_accuracy"]["all"]["n"] == n and len(record["history"]) == 1
    accuracy = record["test_accuracy"]
    by_kind = sum(accuracy[k]["pct"] * accuracy[k]["n"] for k in vqa.KINDS if k in accuracy) / n
    assert by_kind == pytest.approx(accuracy["all"]["pct"])
    assert (
        results["summary"]["pointing"]["0px"]["pred"]["all"]["mean"] == record["pointing"]["0px"]["pred"]["all"]["pct"]
    )


def test_bench_vqa_without_easy_vqa_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # import easy_vqa raises ImportError
    assert main(["bench", "vqa", "--quick", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install easy-vqa" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "0,x"], "--seeds takes comma-separated integers"),
        (["--seeds", "1,1"], "--seeds needs distinct integers"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--train", "-3"], "--train must be >= 1"),
    ],
)
def test_bench_structured_bad_flags(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bench in ("vqa", "caption"):
        assert main(["bench", bench, "--out", str(tmp_path / "o"), *flags]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ captions


def test_captions_read_left_to_right_with_exact_boxes() -> None:
    pytest.importorskip("sklearn")
    data = caption.make_captions(40, seed=2, split="test")
    again = caption.make_captions(40, seed=2, split="test")
    assert torch.equal(data.images, again.images) and torch.equal(data.boxes, again.boxes)
    assert set(data.lengths.tolist()) == {2, 3}
    ink = data.images[:, 0] > 0
    for i in range(len(data)):
        k = int(data.lengths[i])
        boxes = data.boxes[i, :k].tolist()
        covered = torch.zeros_like(ink[i])
        for j, (x0, y0, x1, y1) in enumerate(boxes):
            slot = 96 // k
            assert j * slot <= x0 < x1 <= (j + 1) * slot  # each digit inside its slot: left to right
            box_ink = ink[i, y0:y1, x0:x1]
            assert box_ink[0].any() and box_ink[-1].any() and box_ink[:, 0].any() and box_ink[:, -1].any()
            covered[y0:y1, x0:x1] = True
        assert not (ink[i] & ~covered).any()  # no ink outside the boxes
        assert (data.digits[i, k:] == caption.PAD).all()
    inputs, nexts = data.words()
    k = int(data.lengths[0])
    d = data.digits[0, :k].tolist()
    assert inputs[0].tolist() == [caption.BOS, *d, *[caption.PAD] * (3 - k)]
    assert nexts[0].tolist() == [*d, caption.EOS, *[-100] * (3 - k)]


def test_explain_words_is_grad_cam_of_each_words_log_probability() -> None:
    pytest.importorskip("sklearn")
    data = caption.make_captions(3, seed=0)
    model = caption.Captioner(seed=4)
    inputs, nexts = data.words()
    exp = caption.explain_words(model, data.images, inputs, nexts)
    assert exp.raw.shape == (3, 4, 8, 24)
    for t in range(3):
        features = model.features(data.images).detach().requires_grad_(True)
        state = model.init(model.cells(features))[None]
        hidden, _ = model.gru(model.embed(inputs), state)
        logp = torch.log_softmax(model.out(hidden), -1)
        score = logp[torch.arange(3), t, nexts[:, t].clamp_min(0)]
        torch.testing.assert_close(exp.raw[:, t].clamp_min(0), _grad_cam(features, score), rtol=1e-4, atol=1e-7)


def test_caption_pointing_by_hand() -> None:
    """A captioner whose maps are known: the box tallies and baselines follow from the boxes alone."""
    pytest.importorskip("sklearn")
    data = caption.make_captions(6, seed=1, split="test")
    trials = caption.point(caption.Captioner(seed=0), data, progress=False)
    m = int(data.lengths.sum())
    assert trials["hit"].shape == (m,) and trials["position"].tolist() == [
        p for k in data.lengths.tolist() for p in range(k)
    ]
    boxes = [data.boxes[i, j] for i in range(len(data)) for j in range(int(data.lengths[i]))]
    area = np.array([float((b[2] - b[0]) * (b[3] - b[1])) / (32 * 96) for b in boxes])
    np.testing.assert_allclose(trials["random"], area, rtol=1e-6)
    centre = np.array([b[0] <= 48 < b[2] and b[1] <= 16 < b[3] for b in boxes])
    np.testing.assert_array_equal(trials["centre"], centre)
    # the peaks decide hit and other: recompute them from the boxes
    hits, others, n = [], [], 0
    for i in range(len(data)):
        k = int(data.lengths[i])
        for j in range(k):
            r, c = trials["peaks"][n]
            inside = [bool(b[0] <= c < b[2] and b[1] <= r < b[3]) for b in data.boxes[i, :k].tolist()]
            hits.append(inside[j])
            others.append(any(v for jj, v in enumerate(inside) if jj != j))
            n += 1
    np.testing.assert_array_equal(trials["hit"], hits)
    np.testing.assert_array_equal(trials["other"], others)


def test_bench_caption_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sklearn")
    out = tmp_path / "cap"
    flags = ["--out", str(out), "--seeds", "0,1", "--train", "40", "--test", "10", "--epochs", "1"]
    assert main(["bench", "caption", *flags]) == 0
    assert "| pointing game |" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["caption_examples.png", "results.json", "table.md"]
    results = json.loads((out / "results.json").read_text())
    assert results["command"][:3] == ["camlens", "bench", "caption"] and set(results["seeds"]) == {"0", "1"}
    values = [results["seeds"][s]["pointing"]["hit"]["all"]["pct"] for s in ("0", "1")]
    summary = results["summary"]["pointing"]["hit"]["all"]
    assert summary["values"] == values and summary["mean"] == pytest.approx(sum(values) / 2)


def test_hit_rate_by_hand() -> None:
    rates = _common.hit_rate([True, False, True, True], ["a", "b", "b", "a"])
    assert rates == {"all": {"pct": 75.0, "n": 4}, "a": {"pct": 100.0, "n": 2}, "b": {"pct": 50.0, "n": 2}}
    assert _common.hit_rate([0.25, 0.5])["all"]["pct"] == 37.5
