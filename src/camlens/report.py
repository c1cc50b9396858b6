"""One static HTML page for a run folder: per image, the photo, the overlays per class and method
side by side, the predictions (logit and probability, each named) and the boxes, under the run's
manifest. It opens from disk in a browser, with no server.

The page reads ``RUN/manifest.json`` (format ``camlens.run/1``: model, weights and their SHA-256,
method, layer, threshold, versions, start and finish; a null ``finished`` is a killed run) and
``RUN/results.jsonl`` (one JSON object per explained image; several ``camlens explain`` runs into one
folder add up, and the latest record of an image, method, layer and class wins). Older run folders
(no manifest, records with ``path`` and ``score``) still render; their ``score`` is a probability.

A run folder is untrusted input, since it can come from anyone. So:

* each line is read on its own (huge files stream) and checked against one small schema; a line that
  is not JSON or does not fit is skipped and listed on the page and in :attr:`Report.problems`, as
  ``results.jsonl:7: skipped: explanations[0].box is not 4 integers or null``;
* every value placed in the page is escaped with ``html.escape(..., quote=True)``, attributes quoted;
* a file is linked only if its field is a relative path that resolves (symlinks followed) to an
  existing file inside RUN; absolute paths, ``..`` escapes, symlinks out of RUN and URL schemes are
  not linked. Links are relative URLs with each path component percent-encoded, so the folder moves.

Example::

    report = build_report("runs/cats")          # writes runs/cats/index.html
    for line in report.problems:                 # one line each, e.g. for stderr
        print(f"camlens: {line}", file=sys.stderr)
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

__all__ = ["Report", "build_report", "report_problems", "write_report"]

_FORMAT = "camlens.run/1"
_MAX_LINE = 16 * 2**20  # bytes; a longer line is skipped unread
_MAX_MANIFEST = 4 * 2**20
_MAX_STR = 4096
_MAX_INT = 2**53
_MAX_PROBLEMS = 1000  # kept and listed; the rest are counted
_OUTSIDE = "file outside the run folder, not shown"
_MISSING = "file not found in the run folder, not shown"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; word-break: break-all; }
table { border-collapse: collapse; } td, th { padding: .3rem; vertical-align: top; text-align: left; }
img { max-width: 320px; max-height: 320px; display: block; border: 1px solid #ccc; }
.pred, .src { font-size: .85rem; color: #444; } .box { font-family: monospace; font-size: .8rem; }
.manifest th { font-weight: normal; color: #666; } .note, .warn { color: #a33; } .problems { font-family: monospace; }
"""

_CHECK = """
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = imgs.length; document.body.dataset.rendered = ok;
});
"""


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` did: the page it wrote and what it could not show.

    Attributes:
        path: ``RUN/index.html``.
        images: the number of images on the page.
        problems: one line each, e.g. ``results.jsonl:7: skipped: size is not 2 positive integers``
            or ``results.jsonl:3: explanations[0].files.overlay: file outside the run folder, not shown``;
            at most 1000, then one line counting the rest.
    """

    path: Path
    images: int
    problems: tuple[str, ...]


# --- the schema: one check per field kind; a check returns why a value does not fit, or None ---------

_Check = Callable[[Any], Optional[str]]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) <= _MAX_INT


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= 1e300


def _text(v: Any) -> str | None:
    if not isinstance(v, str):
        return "is not a string"
    return f"is longer than {_MAX_STR} characters" if len(v) > _MAX_STR else None


def _int(v: Any) -> str | None:
    return None if _is_int(v) else "is not an integer"


def _num(v: Any) -> str | None:
    return None if _is_num(v) else "is not a finite number"


def _prob(v: Any) -> str | None:
    return None if _is_num(v) and 0 <= v <= 1 else "is not a probability in [0, 1]"


def _box(v: Any) -> str | None:
    ok = isinstance(v, list) and len(v) == 4 and all(_is_int(c) for c in v)
    return None if ok else "is not 4 integers or null"


def _size(v: Any) -> str | None:
    ok = isinstance(v, list) and len(v) == 2 and all(_is_int(c) and c > 0 for c in v)
    return None if ok else "is not 2 positive integers"


def _texts(v: Any) -> str | None:
    if not isinstance(v, list):
        return "is not a list of strings"
    return next((f"[{i}] {why}" for i, s in enumerate(v) if (why := _text(s))), None)


def _files(v: Any) -> str | None:
    if not isinstance(v, dict):
        return "is not an object"
    return next((f".{k} {why}" for k, s in v.items() if (why := _text(s))), None)


_SCORE: dict[str, _Check] = {"class_id": _int, "label": _text, "logit": _num, "probability": _prob, "score": _prob}
_EXPLANATION: dict[str, _Check] = {**_SCORE, "method": _text, "layer": _text, "box": _box, "files": _files}


def _objects(spec: dict[str, _Check]) -> _Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return "is not a list"
        return next((f"[{i}]{why}" for i, item in enumerate(v) if (why := _fits(item, spec, "."))), None)

    return check


_RECORD: dict[str, _Check] = {
    "source": _text,
    "path": _text,  # older run folders
    "name": _text,
    "size": _size,
    "photo": _text,
    "predictions": _objects(_SCORE),
    "explanations": _objects(_EXPLANATION),
    "grid": _text,
    "warnings": _texts,
}
_MANIFEST: dict[str, _Check] = {
    "format": _text,
    "camlens": _text,
    "torch": _text,
    "python": _text,
    "command": _texts,
    "model": _text,
    "weights": _text,
    "weights_sha256": _text,
    "method": _text,
    "layer": _text,
    "threshold": _num,
    "started": _text,
    "finished": _text,
    "images": _int,
    "failed": _int,
    "files": _texts,
}


def _fits(obj: Any, spec: dict[str, _Check], dot: str = "") -> str | None:
    """Why ``obj`` is not an object fitting ``spec``, or None. Missing and null values are both unknown."""
    if not isinstance(obj, dict):
        return " is not an object"
    for key, check in spec.items():
        value = obj.get(key)
        if value is not None and (why := check(value)):
            return f"{dot}{key}{'' if why.startswith(('.', '[')) else ' '}{why}"
    return None


# --- reading -----------------------------------------------------------------------------------------


@dataclass
class _Problems:
    lines: list[str] = field(default_factory=list)
    more: int = 0

    def add(self, line: str) -> None:
        if len(self.lines) < _MAX_PROBLEMS:
            self.lines.append(line)
        else:
            self.more += 1

    def all(self) -> tuple[str, ...]:
        tail = [f"... and {self.more} more problem(s) not listed"] if self.more else []
        return (*self.lines, *tail)


def _lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` one at a time; ``None`` for a line longer than ``_MAX_LINE`` (not kept)."""
    with path.open("rb") as f:
        n = 0
        while True:
            chunk = f.readline(_MAX_LINE + 1)
            if not chunk:
                return
            n += 1
            if len(chunk) > _MAX_LINE and not chunk.endswith(b"\n"):
                while chunk and not chunk.endswith(b"\n"):
                    chunk = f.readline(_MAX_LINE)
                yield n, None
            else:
                yield n, chunk


def _records(run: Path, problems: _Problems) -> Iterator[tuple[int, dict[str, Any]]]:
    path = run / "results.jsonl"
    if not path.is_file():
        raise ValueError(f"{run}: no results.jsonl here; run `camlens explain ... --out {run}` first")
    for n, raw in _lines(path):
        where = f"results.jsonl:{n}"
        if raw is None:
            problems.add(f"{where}: skipped: line longer than {_MAX_LINE // 2**20} MB")
            continue
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            problems.add(f"{where}: not a JSON line (not UTF-8)")
            continue
        except json.JSONDecodeError as err:
            problems.add(f"{where}: not a JSON line ({err.msg} at column {err.colno})")
            continue
        except (ValueError, RecursionError) as err:  # 5000-digit integers, deep nesting
            problems.add(f"{where}: not a JSON line ({type(err).__name__}: {str(err)[:80]})")
            continue
        why = _fits(obj, _RECORD)
        if why is None and not any(isinstance(obj.get(k), str) and obj[k] for k in ("source", "path", "name")):
            why = " names no image (no source)"
        if why is not None:
            problems.add(f"{where}: skipped: {'record' if why.startswith(' ') else ''}{why}")
            continue
        yield n, obj


def _manifest(run: Path, problems: _Problems) -> dict[str, Any] | None:
    path = run / "manifest.json"
    if not path.is_file():
        return None
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_MANIFEST + 1)
        if len(raw) > _MAX_MANIFEST:
            raise ValueError(f"larger than {_MAX_MANIFEST // 2**20} MB")
        obj = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        problems.add(f"manifest.json: not read ({type(err).__name__}: {str(err)[:80]})")
        return None
    if not isinstance(obj, dict):
        problems.add("manifest.json: not read (not a JSON object)")
        return None
    manifest = {}
    for key, check in _MANIFEST.items():  # a wrong field is dropped, the rest still shown
        value = obj.get(key)
        if value is not None and (why := check(value)):
            problems.add(f"manifest.json: {key} {why.lstrip('.')}; not shown")
        else:
            manifest[key] = value
    if "finished" not in obj:
        manifest["finished"] = None
    if manifest.get("format") not in (None, _FORMAT):
        problems.add(f"manifest.json: format {manifest['format']!r} is not {_FORMAT}; shown as far as understood")
    return manifest


def _link(root: Path, value: str, legacy: bool) -> tuple[str | None, str | None]:
    """``(relative URL, None)`` for a file inside the run folder ``root`` (resolved), else ``(None, why)``.

    Older run folders wrote absolute paths, or paths relative to the working directory: for them, such
    a path is linked too when it resolves inside the run folder.
    """
    if not value or "\x00" in value or _SCHEME.match(value):
        return None, _OUTSIDE
    p = Path(value)
    candidates = [] if p.is_absolute() else [root / p]
    if legacy:  # cwd / an absolute path is that path
        candidates.append(Path.cwd() / p)
    why = _OUTSIDE
    for candidate in candidates:
        try:
            target = candidate.resolve()
        except (OSError, RuntimeError, ValueError):  # symlink loops, odd names
            continue
        if root not in target.parents:
            continue
        if not target.is_file():
            why = _MISSING
            continue
        return "/".join(quote(part, safe="") for part in target.relative_to(root).parts), None
    return None, why


# --- the page ----------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if abs(x) < 1e6 else f"{x:.3g}"


def _scores(d: dict[str, Any]) -> str:
    """``logit 9.10 · p 0.610``, leaving out what is not known; old records' ``score`` is a probability."""
    p = d.get("probability", d.get("score"))
    parts = ([f"logit {_fmt(d['logit'], 2)}"] if d.get("logit") is not None else []) + (
        [f"p {_fmt(p, 3)}"] if p is not None else []
    )
    return _e(" · ".join(parts))


def _named(d: dict[str, Any]) -> str:
    label = d.get("label")
    class_id = d.get("class_id")
    name = "target" if label is None else label
    return _e(name if class_id is None else f"{name} ({class_id})")


def _manifest_html(manifest: dict[str, Any] | None) -> str:
    if manifest is None:
        return "<p class='note'>no manifest (an older run folder): model, method and versions unknown</p>"

    def v(key: str, none: str = "n/a") -> str:
        return none if manifest.get(key) is None else _e(manifest[key])

    weights = v("weights", "none given (the model's default)")
    if manifest.get("weights_sha256"):
        weights += f" <small>sha256 {_e(manifest['weights_sha256'][:12])}</small>"
    finished = v("finished") if manifest.get("finished") is not None else "<span class='note'>(run interrupted)</span>"
    command = " ".join(manifest["command"]) if manifest.get("command") else None
    rows = [
        ("model", v("model")),
        ("weights", weights),
        ("method", v("method")),
        ("layer", v("layer")),
        ("threshold", v("threshold")),
        ("images", v("images") + (f" ({v('failed')} failed)" if manifest.get("failed") is not None else "")),
        (
            "versions",
            f"camlens {v('camlens')}, torch {v('torch')}"
            + (f", python {v('python')}" if manifest.get("python") else ""),
        ),
        ("started", v("started")),
        ("finished", finished),
        ("command", "n/a" if command is None else f"<code>{_e(command)}</code>"),
    ]
    return "<table class='manifest'>" + "".join(f"<tr><th>{k}</th><td>{val}</td></tr>" for k, val in rows) + "</table>"


@dataclass
class _Image:
    record: dict[str, Any]
    line: int
    # (class_id, label, method, layer) -> (line, index in explanations, explanation): the latest wins
    cells: dict[tuple[Any, Any, Any, Any], tuple[int, int, dict[str, Any]]] = field(default_factory=dict)


def _file_html(root: Path, value: Any, alt: str, where: str, legacy: bool, problems: _Problems) -> str:
    if value is None:
        return ""
    url, why = _link(root, value, legacy)
    if url is None:
        problems.add(f"{where}: {why}")
        return f"<div class='note'>{_e(why)}</div>"
    return f'<img src="{_e(url)}" alt="{_e(alt)}">'


def _image_html(root: Path, key: str, image: _Image, problems: _Problems) -> list[str]:
    record = image.record
    legacy = record.get("source") is None and record.get("path") is not None
    source = record.get("path") if legacy else record.get("source")
    size = f" <small>({_e(record['size'][0])}x{_e(record['size'][1])})</small>" if record.get("size") else ""
    parts = [f"<h2>{_e(key)}{size}</h2>"]
    if source is not None and source != key:
        parts.append(f"<p class='src'>source: {_e(source)}</p>")
    preds = ", ".join(f"{_named(p)} {_scores(p)}" for p in record.get("predictions") or [])
    parts.append(f"<p class='pred'>predictions: {preds or 'n/a'}</p>")
    for warning in record.get("warnings") or []:
        parts.append(f"<p class='warn'>warning: {_e(warning)}</p>")
    if record.get("grid") is not None:
        url, why = _link(root, record["grid"], legacy)
        if url is None:
            problems.add(f"results.jsonl:{image.line}: grid: {why}")
        else:
            parts.append(f'<p><a href="{_e(url)}">all classes in one picture</a></p>')
    if legacy:  # the input itself; shown only when it was written into the run folder
        photo_url, _ = _link(root, source, True) if source else (None, None)
        photo = (
            f'<img src="{_e(photo_url)}" alt="photo">'
            if photo_url
            else "<div class='note'>no photo in the run folder</div>"
        )
    else:
        where = f"results.jsonl:{image.line}: photo"
        photo = (
            _file_html(root, record.get("photo"), "photo", where, False, problems) or "<div class='note'>no photo</div>"
        )
    columns = list(dict.fromkeys((m, layer) for (_, _, m, layer) in image.cells))
    classes = list(dict.fromkeys((c, label) for (c, label, _, _) in image.cells))  # in record order
    head = "".join(
        f"<th>{_e('method?' if m is None else m)}{'' if layer is None else f' <small>{_e(layer)}</small>'}</th>"
        for m, layer in columns
    )
    parts.append(f"<table><tr><th>photo</th>{head}</tr>")
    for i, (class_id, label) in enumerate(classes):
        cells = [f"<td>{photo}</td>" if i == 0 else "<td></td>"]
        for m, layer in columns:
            found = image.cells.get((class_id, label, m, layer))
            if found is None:
                cells.append("<td></td>")
                continue
            line, k, e = found
            files = e.get("files") or {}
            where = f"results.jsonl:{line}: explanations[{k}].files"
            pictures = "".join(
                _file_html(root, files.get(kind), f"{label} {kind}", f"{where}.{kind}", legacy, problems)
                for kind in ("overlay", "pixels")
            )
            box = "none" if e.get("box") is None else "[" + ", ".join(str(c) for c in e["box"]) + "]"
            cells.append(f"<td>{pictures}<div>{_named(e)} {_scores(e)}</div><div class='box'>box {_e(box)}</div></td>")
        parts.append(f"<tr>{''.join(cells)}</tr>")
    parts.append("</table>")
    return parts


def _collect(run: Path, problems: _Problems) -> dict[str, _Image]:
    images: dict[str, _Image] = {}
    for n, record in _records(run, problems):
        key = str(record.get("name") or record.get("source") or record.get("path"))
        entry = images.get(key)
        if entry is None:
            entry = images[key] = _Image(record, n)
        entry.record, entry.line = record, n
        for k, e in enumerate(record.get("explanations") or []):
            cell = (e.get("class_id"), e.get("label"), e.get("method"), e.get("layer"))
            entry.cells[cell] = (n, k, e)
    return images


def build_report(run: str | Path, title: str = "camlens report") -> Report:
    """Write ``RUN/index.html`` from ``RUN/manifest.json`` and ``RUN/results.jsonl``.

    Nothing in the folder is trusted: lines that are not JSON or do not fit the schema are skipped,
    files outside the folder are not linked, and each such case is one line of :attr:`Report.problems`
    (also listed on the page). ``camlens report`` prints them to stderr.

    Args:
        run: the run folder written by ``camlens explain``.
        title: the page's title, escaped.

    Returns:
        A :class:`Report` with the page's path, its number of images and the problems.

    Raises:
        ValueError: one line, when ``RUN/results.jsonl`` is missing or none of its lines is valid.

    Example::

        report = build_report("runs/cats")
        print(report.path, len(report.problems))
    """
    run = Path(run)
    if not run.is_dir():
        raise ValueError(f"{run}: not a run folder; run `camlens explain ... --out {run}` first")
    root = run.resolve()
    problems = _Problems()
    images = _collect(run, problems)
    if not images:
        first = problems.lines[0] if problems.lines else "the file is empty"
        raise ValueError(f"{run / 'results.jsonl'}: no valid record ({first})")
    manifest = _manifest(run, problems)
    body = [_manifest_html(manifest), f"<p>{len(images)} image(s) from {_e(run)}</p>"]
    for key, image in images.items():
        body += _image_html(root, key, image, problems)
    listed = problems.all()
    if listed:
        items = "".join(f"<li>{_e(p)}</li>" for p in listed)
        summary = f"<summary class='note'>{len(listed)} problem(s)</summary>"
        body.insert(1, f"<details open>{summary}<ul class='problems'>{items}</ul></details>")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_STYLE}</style>"
        f"</head><body><h1>{_e(title)}</h1>\n" + "\n".join(body) + f"\n<script>{_CHECK}</script></body></html>\n"
    )
    out = root / "index.html"
    # written beside and renamed over: a hostile index.html symlink is replaced, never followed
    fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".html", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Report(path=run / "index.html", images=len(images), problems=listed)


def write_report(run: str | Path, title: str = "camlens report") -> Path:
    """Write ``RUN/index.html`` (see :func:`build_report`) and return its path; problems are not returned."""
    return build_report(run, title).path


def report_problems(run: str | Path) -> list[str]:
    """The problems :func:`build_report` would list for reading ``RUN``, without writing a page.

    Covers the lines skipped and the manifest; files that would not be linked are found only by
    :func:`build_report`. Raises ``ValueError`` like it.
    """
    run = Path(run)
    problems = _Problems()
    if sum(1 for _ in _records(run, problems)) == 0:
        first = problems.lines[0] if problems.lines else "the file is empty"
        raise ValueError(f"{run / 'results.jsonl'}: no valid record ({first})")
    _manifest(run, problems)
    return list(problems.all())
