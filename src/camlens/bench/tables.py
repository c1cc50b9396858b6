"""The digits benchmark's tables: the CAM paper's Tables 1 and 2 (and its CAM-vs-Backprop comparison) over seeds.

Every cell is a statistic over the seeds of one run: the mean, and the range ``min-max`` when there is more
than one seed. :func:`summarise` gives the numbers (mean, min, max, sample sd, the per-seed values), which
the results JSON keeps; :func:`render_tables` writes Markdown and CSV rows from them.

Examples:
    >>> summarise([64.6, 66.8, 63.0])["mean"]
    64.8
    >>> cell(summarise([64.6, 66.8, 63.0]))
    '64.8 (63.0-66.8)'
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["LOC_KEYS", "METHODS", "NETS", "cell", "render_tables", "summarise", "summary"]

NETS = ("gap", "gmp", "fc")
METHODS = ("cam", "gradcam", "gradcam++", "saliency")
NET_NAMES = {"gap": "GAP net (conv-GAP-linear)", "gmp": "GMP net (conv-GMP-linear)", "fc": "FC net (conv-FC-FC)"}
METHOD_NAMES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "saliency": "Backprop (saliency)"}
# Table 2's columns: key in an evaluate row (plus gt_known_loc_err) -> header
LOC_KEYS = {
    "top1_loc_err": "top-1 loc err",
    "topk_loc_err": "top-5 loc err",
    "gt_known_loc_err": "GT-known loc err",
    "maxboxacc": "MaxBoxAcc",
    "maxboxacc_v2": "MaxBoxAccV2",
    "pxap": "PxAP",
}
_CLS_KEYS = {"top1_cls_err": "top-1 err", "topk_cls_err": "top-5 err", "train_acc": "train acc (last epoch)"}
# The CAM paper's Table 2, top-1 localisation error (%) on ILSVRC val: CAM on the GAP nets, Backprop on the originals
_PAPER = {
    ("cam", "gap"): "56.40 (GoogLeNet-GAP), 57.20 (VGGnet-GAP)",
    ("saliency", "fc"): "61.31 (GoogLeNet), 61.12 (VGGnet)",
}


def summarise(values: list[float | None]) -> dict[str, Any]:
    """``{"mean", "min", "max", "sd", "values"}`` of the per-seed ``values``; None (a missing value) is left out.

    ``sd`` is the sample standard deviation (n - 1), None for one value. All None when no value is given.
    """
    known = [float(v) for v in values if v is not None]
    if not known:
        return {"mean": None, "min": None, "max": None, "sd": None, "values": list(values)}
    mean = sum(known) / len(known)
    sd = math.sqrt(sum((v - mean) ** 2 for v in known) / (len(known) - 1)) if len(known) > 1 else None
    return {"mean": mean, "min": min(known), "max": max(known), "sd": sd, "values": list(values)}


def cell(stats: dict[str, Any] | None, digits: int = 1) -> str:
    """``mean (min-max)`` of :func:`summarise`'s result, ``mean`` for one value, ``n/a`` for none."""
    if stats is None or stats["mean"] is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}"
    if len([v for v in stats["values"] if v is not None]) > 1:
        text += f" ({stats['min']:.{digits}f}-{stats['max']:.{digits}f})"
    return text


def summary(per_seed: dict[str, Any]) -> dict[str, Any]:
    """Statistics over seeds of every number of :func:`camlens.bench.wsol_digits.run`'s per-seed records.

    ``per_seed[seed]["nets"][net]`` holds ``classification``, ``train_acc``, ``parameters`` and ``methods``
    (an evaluate row per method, or ``{"applicable": False, ...}``). The result has the same shape with a
    :func:`summarise` dict in place of each number; a method not applicable on every seed is kept as is.
    """
    records = list(per_seed.values())
    out: dict[str, Any] = {}
    for net in records[0]["nets"]:
        runs = [r["nets"][net] for r in records]
        entry: dict[str, Any] = {
            "parameters": runs[0]["parameters"],
            "classification": {k: summarise([r["classification"].get(k) for r in runs]) for k in _CLS_KEYS},
            "methods": {},
        }
        for method, first in runs[0]["methods"].items():
            if not first.get("applicable", True):
                entry["methods"][method] = first
                continue
            keys = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            entry["methods"][method] = {k: summarise([r["methods"][method].get(k) for r in runs]) for k in keys}
        out[net] = entry
    return out


def render_tables(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Markdown of Tables 1-3 from ``results["summary"]`` (see :func:`summary`), and one CSV row per cell.

    The CSV rows are ``{"table", "network", "method", "metric", "mean", "min", "max", "sd", "seeds"}``.
    """
    summ = results["summary"]
    seeds = results["config"]["seeds"]
    spread = f"mean over seeds {', '.join(map(str, seeds))} (min-max)" if len(seeds) > 1 else f"seed {seeds[0]}"
    rows: list[dict[str, Any]] = []

    def row(table: str, net: str, method: str, metric: str, stats: dict[str, Any]) -> None:
        rows.append(
            {"table": table, "network": net, "method": method, "metric": metric, "seeds": len(seeds)}
            | {k: stats[k] for k in ("mean", "min", "max", "sd")}
        )

    lines = [
        f"Table 1. Classification error (%) on the test set (cf. CAM paper, Table 1); {spread}.",
        "",
        "| Network | " + " | ".join(_CLS_KEYS.values()) + " | parameters |",
        "|---|" + "---:|" * (len(_CLS_KEYS) + 1),
    ]
    for net in (n for n in NETS if n in summ):
        cls = summ[net]["classification"]
        cells = [cell(cls[k]) for k in _CLS_KEYS]
        lines.append(f"| {NET_NAMES[net]} | " + " | ".join(cells) + f" | {summ[net]['parameters']:,} |")
        for k in _CLS_KEYS:
            row("1", net, "", k, cls[k])
    lines += [
        "",
        f"Table 2. Localisation (%) on the test set, {spread}. Errors (lower is better): the box of the true "
        "class's map at 20% of its max, largest component, IoU >= 0.5 (cf. CAM paper, Table 2). MaxBoxAcc, "
        "MaxBoxAccV2 and PxAP (Choe et al. 2020): higher is better.",
        "",
        "| Method | Network | " + " | ".join(LOC_KEYS.values()) + " |",
        "|---|---|" + "---:|" * len(LOC_KEYS),
    ]
    for method in METHODS:
        for net in (n for n in NETS if n in summ and method in summ[n]["methods"]):
            m = summ[net]["methods"][method]
            applicable = m.get("applicable", True)
            cells = [cell(m.get(k)) if applicable else "n/a" for k in LOC_KEYS]
            lines.append(f"| {METHOD_NAMES[method]} | {NET_NAMES[net]} | " + " | ".join(cells) + " |")
            for k in LOC_KEYS if applicable else ():
                if m.get(k) is not None:
                    row("2", net, method, k, m[k])
    pairs = [(m, n) for m, n in _PAPER if n in summ and summ[n]["methods"].get(m, {}).get("applicable", True)]
    pairs = [(m, n) for m, n in pairs if m in summ[n]["methods"]]
    if pairs:
        lines += [
            "",
            "Table 3. The CAM paper's comparison: CAM on the GAP net against Backprop on the original (FC) net "
            f"(%; {spread}); the paper's top-1 localisation error on ILSVRC val for reference.",
            "",
            "| Method | Network | top-1 loc err | GT-known loc err | MaxBoxAccV2 | PxAP | paper's top-1 loc err |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for method, net in pairs:
            m = summ[net]["methods"][method]
            cells = [cell(m.get(k)) for k in ("top1_loc_err", "gt_known_loc_err", "maxboxacc_v2", "pxap")]
            lines.append(
                f"| {METHOD_NAMES[method]} | {NET_NAMES[net]} | " + " | ".join(cells) + f" | {_PAPER[method, net]} |"
            )
    return "\n".join(lines) + "\n", rows
