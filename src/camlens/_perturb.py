"""One chunked, batched forward over perturbed copies of samples, each copy scored by one scorer.

Every method and metric that perturbs and re-scores goes through :func:`perturbed_scores`: Score-CAM
(inputs masked by each channel), Ablation-CAM (the layer's output with one channel zeroed, replayed
through the tail), deletion / insertion, Average Drop / Increase in Confidence and ROAD. N rows, row i a
perturbed copy of sample ``owners[i]``, are built and run ``batch_size`` at a time, so only one chunk of
copies exists at once; the scorer (:class:`camlens.targets.RowScorer`) knows from ``owners`` which
target each row is scored for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["perturbed_scores"]


def perturbed_scores(
    forward: Callable[[slice], Any],
    owners: torch.Tensor,
    scorer: Callable[[Any, torch.Tensor], torch.Tensor],
    batch_size: int,
    *,
    desc: str,
    progress: bool | None = None,
) -> torch.Tensor:
    """Scores (N, K) of N perturbed rows, ``batch_size`` rows per forward, under ``torch.inference_mode()``.

    Args:
        forward: ``forward(rows)`` runs the model on rows ``rows.start:rows.stop`` and returns its output;
            for perturbed inputs ``lambda rows: model(build(rows))``, for a replayed layer a forward whose
            hook replaces the layer's output by the chunk's perturbed activations.
        owners: (N,) the sample each row belongs to; ``len(owners)`` is the number of rows.
        scorer: ``scorer(output, owners[rows]) -> (n, K)`` (or (n,)), e.g. a :class:`~camlens.targets.RowScorer`.
        batch_size: rows per forward, >= 1. Chunks straddle samples; results do not depend on it.
        desc: label of the progress bar.
        progress: tqdm bar with ETA; ``None`` shows it only for 256 rows or more.

    Returns:
        The chunks' scores concatenated in row order, in the scorer's dtype and device (an empty (0,)
        tensor for N = 0).

    Example:
        >>> scorer = RowScorer(ids, "probability")
        >>> perturbed_scores(lambda rows: model(masked[rows]), owners, scorer, 16, desc="masks")
    """
    from tqdm.auto import tqdm  # imported on first use: most camlens calls never perturb

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    total = int(owners.shape[0])
    disable = total < 256 if progress is None else not progress
    parts = []
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="row", disable=disable, leave=False) as bar:
        for start in range(0, total, batch_size):
            rows = slice(start, min(start + batch_size, total))
            parts.append(scorer(forward(rows), owners[rows]))
            bar.update(rows.stop - rows.start)
    return torch.cat(parts) if parts else torch.empty(0)
