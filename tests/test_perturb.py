"""The one chunked masked forward (camlens._perturb) and the one scorer (camlens.targets.RowScorer).

Every expected number is a sum worked out by hand: ``Sum3`` outputs [s, 2s, -s] for a row whose pixel
sum is s, and the masks below keep pixels one can add up.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from camlens._perturb import perturbed_scores
from camlens.targets import RowScorer, class_ids


class Sum3(nn.Module):
    """Output [s, 2s, -s] with s the sum of the row's pixels: class 0 is the sum, class 1 twice it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).sum(1)
        return torch.stack([s, 2 * s, -s], dim=1)


# Two 1x2x2 samples: sample 0 sums to 10, sample 1 to 100.
X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[10.0, 20.0], [30.0, 40.0]]]], dtype=torch.float64)
# Five perturbed rows: (owner, mask) -> pixel sum kept.
OWNERS = torch.tensor([0, 0, 1, 1, 0])
MASKS = torch.tensor(
    [
        [[1.0, 0.0], [0.0, 0.0]],  # sample 0 keeps 1            -> s = 1
        [[0.0, 1.0], [1.0, 0.0]],  # sample 0 keeps 2 + 3        -> s = 5
        [[1.0, 1.0], [0.0, 0.0]],  # sample 1 keeps 10 + 20      -> s = 30
        [[1.0, 1.0], [1.0, 1.0]],  # sample 1 keeps everything   -> s = 100
        [[0.0, 0.0], [0.0, 0.0]],  # sample 0 keeps nothing      -> s = 0
    ],
    dtype=torch.float64,
)[:, None]
SUMS = [1.0, 5.0, 30.0, 100.0, 0.0]


def _masked(rows: slice) -> torch.Tensor:
    return X[OWNERS[rows]] * MASKS[rows]


def _run(
    scorer: Any, batch_size: int = 2, progress: bool | None = False, model: nn.Module | None = None
) -> torch.Tensor:
    net = model or Sum3()
    return perturbed_scores(lambda rows: net(_masked(rows)), OWNERS, scorer, batch_size, desc="test", progress=progress)


def test_logit_scores_by_hand_each_row_scored_for_its_sample() -> None:
    # sample 0 explains class 0 (s), sample 1 class 1 (2s): 1, 5, 60, 200, 0
    scores = _run(RowScorer(torch.tensor([[0], [1]]), "logit"))
    assert scores.dtype == torch.float64
    assert scores.tolist() == [[1.0], [5.0], [60.0], [200.0], [0.0]]
    # two targets per sample: sample 0 -> classes (0, 2) = (s, -s); sample 1 -> (1, 0) = (2s, s)
    two = _run(RowScorer(torch.tensor([[0, 2], [1, 0]]), "logit"))
    assert two.tolist() == [[1, -1], [5, -5], [60, 30], [200, 100], [0, 0]]


def test_probability_scores_by_hand() -> None:
    # softmax of [s, 2s, -s] at class 0: e^s / (e^s + e^2s + e^-s); at s = 0 every class has 1/3
    scores = _run(RowScorer(torch.tensor([[0], [0]]), "probability"))
    expected = [math.exp(s) / (math.exp(s) + math.exp(2 * s) + math.exp(-s)) for s in SUMS]
    torch.testing.assert_close(scores[:, 0], torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert float(scores[4, 0]) == pytest.approx(1 / 3, abs=1e-15)


@pytest.mark.parametrize("kind", ["logit", "probability"])
def test_chunk_sizes_and_progress_bar_do_not_change_the_scores(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    scorer = RowScorer(torch.tensor([[0, 1], [2, 1]]), kind)
    whole = _run(scorer, batch_size=len(OWNERS))
    for size in (1, 3, 5, 64):
        assert torch.equal(_run(scorer, batch_size=size), whole)
    assert torch.equal(_run(scorer, batch_size=3, progress=True), whole)
    assert "test" in capsys.readouterr().err  # the bar was drawn, with its label
    assert torch.equal(_run(scorer, batch_size=3, progress=None), whole)  # auto: off below 256 rows
    assert capsys.readouterr().err == ""


def test_chunks_see_their_rows_and_owners_under_inference_mode() -> None:
    seen: list[tuple[slice, list[int], bool]] = []

    def forward(rows: slice) -> torch.Tensor:
        seen.append((rows, [], torch.is_inference_mode_enabled()))
        return Sum3()(_masked(rows))

    def scorer(output: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        seen[-1][1].extend(owners.tolist())
        return output[:, :1]

    scores = perturbed_scores(forward, OWNERS, scorer, 3, desc="test")
    assert seen == [(slice(0, 3), [0, 0, 1], True), (slice(3, 5), [1, 0], True)]
    assert scores[:, 0].tolist() == SUMS
    # owners in any order: a row is scored for its own sample's class, not its position's
    shuffled = torch.tensor([1, 0, 1, 0, 0])
    out = RowScorer(torch.tensor([[1], [0]]), "logit")(Sum3()(X[shuffled]), shuffled)
    assert out[:, 0].tolist() == [100.0, 20.0, 100.0, 20.0, 20.0]


def test_a_callable_target_goes_through_the_same_scorer() -> None:
    # a callable scores the rows as they are: 10 * s - 1
    scores = _run(RowScorer(lambda out: 10 * out[:, 0] - 1, "logit", k=1), batch_size=3)
    assert scores[:, 0].tolist() == [9.0, 49.0, 299.0, 999.0, -1.0]
    # (n, K) callables; K is checked against what the caller expects
    pair = _run(RowScorer(lambda out: out[:, :2], "logit", k=2), batch_size=2)
    assert pair.tolist() == [[s, 2 * s] for s in SUMS]
    with pytest.raises(ValueError, match=r"shape \(2, 2\) for a batch of 2, got \(2,\)"):
        _run(RowScorer(lambda out: out[:, 0], "logit", k=2))
    with pytest.raises(ValueError, match=r"shape \(2,\) or \(2, 1\) for a batch of 2, got \(1,\)"):
        _run(RowScorer(lambda out: out[:1, 0], "logit", k=1))
    with pytest.raises(TypeError, match="must return a tensor, got float"):
        _run(RowScorer(lambda out: 3.0, "logit"))


def test_precision_is_kept_and_half_is_raised_to_float32() -> None:
    scorer = RowScorer(torch.tensor([[0], [1]]), "logit")
    assert _run(scorer, model=Sum3()).dtype == torch.float64
    half = perturbed_scores(lambda rows: Sum3()(_masked(rows).half()), OWNERS, scorer, 2, desc="test")
    assert half.dtype == torch.float32
    assert half.tolist() == [[1.0], [5.0], [60.0], [200.0], [0.0]]


def test_mistakes_and_edges() -> None:
    scorer = RowScorer(torch.tensor([[0], [3]]), "logit")
    with pytest.raises(ValueError, match=r"class id 3 is out of range: the model has classes 0\.\.2"):
        _run(scorer)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        _run(RowScorer(torch.tensor([[0], [1]])), batch_size=0)
    with pytest.raises(ValueError, match="score must be 'probability' or 'logit', got 'prob'"):
        RowScorer(torch.tensor([[0]]), "prob")
    with pytest.raises(ValueError, match=r"shape \(batch, classes\), got \(5, 1, 2, 2\)"):
        perturbed_scores(_masked, OWNERS, RowScorer(torch.tensor([[0], [1]])), 5, desc="test")
    empty = perturbed_scores(_masked, torch.zeros(0, dtype=torch.long), RowScorer(torch.tensor([[0]])), 4, desc="x")
    assert empty.shape == (0,)


def test_class_ids_is_the_one_validator() -> None:
    assert class_ids(2, 3).tolist() == [[2], [2], [2]]
    assert class_ids([1, 0], 2, 5).tolist() == [[1], [0]]
    assert class_ids(torch.tensor([[1, 4], [0, 2]]), 2, 5).tolist() == [[1, 4], [0, 2]]
    with pytest.raises(ValueError, match=r"2 class ids for a batch of 1: give one id per image or an int for all$"):
        class_ids([0, 1], 1, k=1)
    with pytest.raises(ValueError, match=r"give 1 class id\(s\) per image"):
        class_ids([[0, 1]], 1, k=1)
    with pytest.raises(ValueError, match="class id -1 is out of range: class ids start at 0"):
        class_ids([-1], 1)
    with pytest.raises(TypeError, match="not a bool"):
        class_ids(True, 1)


def test_observer_sees_every_chunk_and_a_cancel_stops_between_chunks() -> None:
    from camlens._perturb import Cancelled, observe

    seen: list[tuple[int, int, str]] = []
    with observe(lambda done, total, desc: seen.append((done, total, desc))):
        _run(RowScorer(torch.tensor([[0], [1]]), "logit"), batch_size=2)
    # 5 rows in chunks of 2: before the first chunk, then after rows 2, 4 and 5
    assert seen == [(0, 5, "test"), (2, 5, "test"), (4, 5, "test"), (5, 5, "test")]
    _run(RowScorer(torch.tensor([[0], [1]]), "logit"))  # outside the block nothing is called
    assert len(seen) == 4

    calls: list[int] = []

    class Counting(Sum3):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return super().forward(x)

    def stop_after_first_chunk(done: int, total: int, desc: str) -> None:
        if done >= 2:
            raise Cancelled

    with observe(stop_after_first_chunk), pytest.raises(Cancelled):
        _run(RowScorer(torch.tensor([[0], [1]]), "logit"), batch_size=2, model=Counting())
    assert calls == [2]  # one chunk ran, the other two never did
