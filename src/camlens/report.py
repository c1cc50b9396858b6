"""One static HTML page for a run folder: per image, the photo, the overlays per class and method
side by side, the predictions and the boxes. It opens from disk in a browser, with no server.

The page reads ``results.jsonl`` (one line per explained image, appended by every ``camlens explain``
into the folder, so runs of several methods into one folder appear side by side; the latest record
of an image, method and class wins). Image links are relative, so the folder can be moved.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["write_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; word-break: break-all; }
table { border-collapse: collapse; } td, th { padding: .3rem; vertical-align: top; text-align: left; }
img { max-width: 320px; max-height: 320px; display: block; border: 1px solid #ccc; }
.pred { font-size: .85rem; color: #444; } .box { font-family: monospace; font-size: .8rem; }
"""

_CHECK = """
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = imgs.length; document.body.dataset.rendered = ok;
});
"""


def _records(run: Path) -> list[dict[str, Any]]:
    path = run / "results.jsonl"
    if not path.is_file():
        raise ValueError(f"{run}: no results.jsonl here; run `camlens explain ... --out {run}` first")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON line ({err.msg})") from err
    return records


def write_report(run: str | Path, title: str = "camlens report") -> Path:
    """Write ``RUN/index.html`` from ``RUN/results.jsonl`` and return its path."""
    run = Path(run)
    images: dict[str, dict[str, Any]] = {}
    for record in _records(run):
        entry = images.setdefault(record["path"], {"record": record, "cells": {}})
        entry["record"] = record
        for e in record["explanations"]:
            entry["cells"][(e["class_id"], e["label"], e["method"])] = e

    def rel(p: str) -> str:
        return html.escape(os.path.relpath(p, run))

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>"]
    parts.append(f"<body><h1>{html.escape(title)}</h1><p>{len(images)} image(s) from {html.escape(str(run))}</p>")
    for path, entry in images.items():
        record = entry["record"]
        w, h = record["size"]
        parts.append(f"<h2>{html.escape(path)} <small>({w}x{h})</small></h2>")
        preds = ", ".join(f"{html.escape(p['label'])} {p['score']:.3f}" for p in record.get("predictions", []))
        parts.append(f"<p class='pred'>predictions: {preds or 'n/a'}</p>")
        methods = sorted({m for (_, _, m) in entry["cells"]})
        classes = list(dict.fromkeys((c, label) for (c, label, _) in entry["cells"]))  # in prediction order
        parts.append("<table><tr><th>photo</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods) + "</tr>")
        for i, (class_id, label) in enumerate(classes):
            photo = f"<td><img src='{rel(path)}' alt='photo'></td>" if i == 0 else "<td></td>"
            cells = []
            for m in methods:
                e = entry["cells"].get((class_id, label, m))
                if e is None:
                    cells.append("<td></td>")
                    continue
                extra = f"<img src='{rel(e['files']['pixels'])}' alt='pixels'>" if "pixels" in e["files"] else ""
                cells.append(
                    f"<td><img src='{rel(e['files']['overlay'])}' alt='{html.escape(label)}'>{extra}"
                    f"<div>{html.escape(label)} ({class_id}) score {e['score']:.3f}</div>"
                    f"<div class='box'>box {e['box']}</div></td>"
                )
            parts.append(f"<tr>{photo}{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append(f"<script>{_CHECK}</script></body>")
    out = run / "index.html"
    out.write_text("\n".join(parts))
    return out
