"""What the app computes, without any HTTP: models, photos, explanations and their pictures, with caches.

A :class:`Workspace` holds the models the page may pick (loaded once, on first use, through
:func:`camlens.zoo.load_model` and its trust rules), the photos (uploads decoded by
:func:`camlens.data.images.load_image` with a pixel budget and a list of formats; the built-in demo photos) and
three bounded caches, so a change of only the method, layer, classes or threshold redoes no more than it must:

* per (photo, model): the preprocessed input and its :class:`~camlens.geometry.Geometry`, and the model's
  probabilities from one plain forward (the top-5 list, the top-k targets and the labels' probabilities);
* per (model, method, layer): the method object, so its layer is resolved once (and CAM's head verified once);
* per (photo, model, method, layer, classes): the :class:`~camlens.Explanation` itself. A new threshold, a
  method switched back to, or a class dropped from the list... redraws from it without a forward.

What the core does not allow to reuse: the forward inside a method call. Gradient methods need the autograd
graph of the tail after their layer, which no earlier forward kept, and each method captures its own layer;
so two methods on one photo cost two forwards (docs/app.md gives the measured times).

Every picture goes through the one geometry path (``Geometry.to_original`` -> ``geometry.box``) and ``viz``.
"""

from __future__ import annotations

import inspect
import io
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camlens._json import number as json_number

__all__ = ["ACCEPTED_FORMATS", "Limits", "RequestError", "Workspace"]

# PIL format names an upload may have: the formats browsers and cameras write (no EPS, which runs Ghostscript,
# no ICO/PSD/... decoders nobody needs here)
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


class RequestError(ValueError):
    """A request the page cannot serve (bad upload, unknown class, ...): its message is shown to the user."""


@dataclass(frozen=True)
class Limits:
    """What one user of the page may ask for; the defaults are those of ``camlens app``."""

    max_upload_bytes: int = 20 * 2**20  # checked from Content-Length before a byte of the body is read
    max_pixels: int = 24_000_000  # checked from the image header (load_image) before decoding
    max_photos: int = 16  # photos kept in memory (least recently used dropped)
    max_explanations: int = 32  # cached explanations
    max_methods: int = 6  # methods per request
    max_targets: int = 10  # classes per request
    max_steps: int = 50  # steps of the deletion / insertion curves
    display: int = 768  # longest side of the pictures sent to the page


class _LRU:
    """A small least-recently-used dict (thread-safe) with a fixed number of entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Hashable, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self.lock:
            if key not in self.items:
                return None
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@dataclass
class Photo:
    """A decoded photo (RGB, as load_image returns it) and the name the page shows."""

    image: Any
    name: str


@dataclass
class _Prepared:
    x: torch.Tensor
    geometry: Any
    probabilities: torch.Tensor | None  # (classes,) softmax of the plain forward, None for non-2-D outputs
    logits: torch.Tensor | None


@dataclass
class Outcome:
    """One request's result: the JSON document for the page and the files it links (name -> bytes, type)."""

    doc: dict[str, Any]
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)


def _png(image: Any, limit: int) -> bytes:
    if max(image.size) > limit:
        image = image.copy()
        image.thumbnail((limit, limit))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Workspace:
    """Models, photos and caches of one app; every method is safe to call from several threads.

    Args:
        models: name -> a spec for :func:`camlens.zoo.load_model` (``"efficientnet_lite0"``, a file, ...), a
            ready :class:`~camlens.zoo.ModelBundle` (tests, Python users) or a function returning one (the CLI's
            ``load_model`` with its flags); loaded on first use, once.
        limits: see :class:`Limits`.
        trust: passed to :func:`camlens.zoo.load_model` (``--trust-model-file``) for the specs given.
    """

    def __init__(self, models: dict[str, Any], limits: Limits | None = None, *, trust: bool = False) -> None:
        if not models:
            raise ValueError("the app needs at least one model")
        self.specs = dict(models)
        self.limits = limits or Limits()
        self.trust = trust
        self._bundles: dict[str, Any] = {}
        self._layers: dict[str, list[Any]] = {}
        self._load_lock = threading.Lock()
        self._photos = _LRU(self.limits.max_photos)
        self._prepared = _LRU(self.limits.max_photos * max(1, len(models)))
        self._methods = _LRU(64)
        self._explanations = _LRU(self.limits.max_explanations)
        self._ids = 0
        self._id_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ models

    def bundle(self, name: str) -> Any:
        """The model called ``name`` on the page (loaded on first use, once)."""
        from camlens import zoo

        if name not in self.specs:
            raise RequestError(f"unknown model {name!r}; the app serves {', '.join(self.specs)}")
        with self._load_lock:
            if name not in self._bundles:
                spec = self.specs[name]
                try:
                    if isinstance(spec, zoo.ModelBundle):
                        self._bundles[name] = spec
                    elif callable(spec):
                        self._bundles[name] = spec()
                    else:
                        self._bundles[name] = zoo.load_model(spec, trust=self.trust)
                except (ValueError, ImportError) as err:
                    raise RequestError(str(err)) from err
            return self._bundles[name]

    def model_info(self, name: str) -> dict[str, Any]:
        """What the page needs to offer choices: input size, class names, layers (default marked)."""
        from camlens._state import model_lock
        from camlens.capture import layer_table

        bundle = self.bundle(name)
        with self._load_lock:
            rows = self._layers.get(name)
        if rows is None:
            with model_lock(bundle.model):
                rows = layer_table(bundle.model, torch.zeros(1, 3, bundle.size, bundle.size))
            with self._load_lock:
                self._layers[name] = rows
        return {
            "name": name,
            "size": bundle.size,
            "classes": bundle.classes,
            "layers": [{"name": r.name, "grid": list(r.grid), "kind": r.kind, "default": r.default} for r in rows],
        }

    # ------------------------------------------------------------------------------------------ photos

    def _new_id(self, prefix: str) -> str:
        with self._id_lock:
            self._ids += 1
            return f"{prefix}{self._ids}"

    def add_upload(self, data: bytes, name: str = "upload") -> tuple[str, Photo]:
        """Decode an uploaded file (untrusted): size cap, accepted formats, pixel budget from the header."""
        from camlens.data.images import load_image

        if len(data) > self.limits.max_upload_bytes:
            raise RequestError(f"the file is {len(data):,} bytes; the limit is {self.limits.max_upload_bytes:,}")
        if not data:
            raise RequestError("the file is empty")
        shown = "".join(c for c in name if c.isprintable())[:80] or "upload"
        with tempfile.TemporaryDirectory(prefix="camlens-app-") as scratch:
            path = Path(scratch) / "upload"
            path.write_bytes(data)
            try:
                image = load_image(path, max_pixels=self.limits.max_pixels, formats=ACCEPTED_FORMATS)
            except ValueError as err:
                # the message names our scratch path; the user knows the file by its own name
                raise RequestError(str(err).replace(str(path), shown)) from err
        photo_id = self._new_id("p")
        photo = Photo(image, shown)
        self._photos.put(photo_id, photo)
        return photo_id, photo

    def add_demo(self, stem: str) -> tuple[str, Photo]:
        """One of the built-in photos (scikit-image's, as ``camlens evaluate --demo`` uses them)."""
        from camlens.evaluate import DEMO_PHOTOS

        names = {s: n for s, n, _, _ in DEMO_PHOTOS}
        if stem not in names:
            raise RequestError(f"unknown demo photo {stem!r}; choose from {', '.join(names)}")
        try:
            from skimage import data as photos
        except ImportError as err:
            raise RequestError("the demo photos ship with scikit-image: pip install scikit-image") from err
        from PIL import Image

        pixels = getattr(photos, names[stem])()
        image = Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).convert("RGB")
        photo_id = self._new_id("p")
        photo = Photo(image, stem)
        self._photos.put(photo_id, photo)
        return photo_id, photo

    @staticmethod
    def demo_names() -> list[str]:
        from camlens.evaluate import DEMO_PHOTOS

        return [stem for stem, *_ in DEMO_PHOTOS]

    def photo(self, photo_id: str) -> Photo:
        found = self._photos.get(photo_id)
        if found is None:
            raise RequestError("this photo is no longer on the server (too many photos since); upload it again")
        return found

    def preview(self, photo_id: str) -> bytes:
        return _png(self.photo(photo_id).image, self.limits.display)

    # ------------------------------------------------------------------------------------------ explain

    def _prepare(self, photo_id: str, model: str) -> _Prepared:
        from camlens import zoo
        from camlens._state import model_lock

        key = (photo_id, model)
        found = self._prepared.get(key)
        if found is not None:
            return found
        bundle = self.bundle(model)
        x, geometry = zoo.preprocess_with_geometry(self.photo(photo_id).image, bundle.size, bundle.mean, bundle.std)
        with model_lock(bundle.model), torch.inference_mode():
            output = bundle.model(x)
        two_d = isinstance(output, torch.Tensor) and output.dim() == 2
        probabilities = output[0].float().softmax(0).clone() if two_d else None
        prepared = _Prepared(x, geometry, probabilities, output[0].float().clone() if two_d else None)
        self._prepared.put(key, prepared)
        return prepared

    def _method(self, model: str, method: str, layer: str | None) -> Any:
        import camlens

        try:
            cls = camlens.get_method(method)
        except (ValueError, TypeError) as err:
            raise RequestError(str(err)) from err
        layer = layer if cls.takes_layer else None
        key = (model, cls.name, layer)
        found = self._methods.get(key)
        if found is None:
            # the page shows progress through _perturb.observe; tqdm bars would only clutter the server's terminal
            quiet: dict[str, Any] = (
                {"progress": False} if "progress" in inspect.signature(cls.__init__).parameters else {}
            )
            try:
                found = cls(self.bundle(model).model, layer, **quiet)
            except (ValueError, TypeError) as err:
                raise RequestError(str(err)) from err
            self._methods.put(key, found)
        return found

    def _targets(self, bundle: Any, prepared: _Prepared, classes: list[str], topk: int | None) -> list[int]:
        if classes:
            if len(classes) > self.limits.max_targets:
                raise RequestError(f"at most {self.limits.max_targets} classes at once, got {len(classes)}")
            try:
                ids = [bundle.class_id(str(c)) for c in classes]
            except ValueError as err:
                raise RequestError(str(err)) from err
            n = None if prepared.logits is None else int(prepared.logits.shape[0])
            for i in ids:
                if n is not None and not 0 <= i < n:
                    raise RequestError(f"class id {i} is out of range: the model has {n} classes (0 .. {n - 1})")
            return list(dict.fromkeys(ids))
        k = 1 if topk is None else topk
        if not 1 <= k <= self.limits.max_targets:
            raise RequestError(f"top-k must be 1 .. {self.limits.max_targets}, got {k}")
        if prepared.probabilities is None:
            raise RequestError("this model's output is not (batch, classes): name no classes, ask for top-1")
        return [int(i) for i in prepared.probabilities.topk(min(k, prepared.probabilities.numel())).indices]

    def explain(
        self,
        request: dict[str, Any],
        *,
        check: Callable[[], None] = lambda: None,
    ) -> Outcome:
        """Explain one photo with one or more methods; ``check()`` runs between steps (it may raise Cancelled).

        ``request``: ``photo``, ``model``, ``methods`` (list), ``layer`` (None: the default), ``classes`` (names
        or ids) or ``topk``, ``threshold`` in (0, 1], ``curves`` (bool), ``steps``.
        """
        from camlens import geometry as camlens_geometry
        from camlens import viz

        started = time.perf_counter()
        request = _checked(request, self.limits)
        bundle = self.bundle(request["model"])
        photo = self.photo(request["photo"])
        prepared = self._prepare(request["photo"], request["model"])
        ids = self._targets(bundle, prepared, request["classes"], request["topk"])
        probabilities, logits = prepared.probabilities, prepared.logits
        outcome = Outcome(
            {
                "photo": {"id": request["photo"], "name": photo.name, "size": [photo.image.width, photo.image.height]},
                "model": request["model"],
                "threshold": request["threshold"],
                "predictions": []
                if probabilities is None or logits is None
                else [
                    {
                        "class_id": int(c),
                        "label": bundle.label(int(c)),
                        "logit": json_number(float(logits[c])),
                        "probability": json_number(float(p)),
                    }
                    for p, c in zip(*probabilities.topk(min(5, probabilities.numel())))
                ],
                "methods": [],
            }
        )
        for name in request["methods"]:
            check()
            method = self._method(request["model"], name, request["layer"])
            layer = request["layer"] if method.takes_layer else None
            key = (request["photo"], request["model"], method.name, layer, tuple(ids))
            exp = self._explanations.get(key)
            cached = exp is not None
            t0 = time.perf_counter()
            if exp is None:
                try:
                    exp = method(prepared.x, [ids])
                except (ValueError, TypeError) as err:
                    raise RequestError(f"{method.name}: {err}") from err
                self._explanations.put(key, exp)
            seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {
                "method": exp.method,
                "layer": exp.layer if method.takes_layer else None,
                "cached": cached,
                "seconds": round(seconds, 4),
                "raw_size": list(exp.raw.shape[-2:]),
                "targets": [],
            }
            for k, class_id in enumerate(ids):
                check()
                stem = f"{exp.method}_{class_id}"
                label = bundle.label(class_id)
                probability = None if probabilities is None else json_number(float(probabilities[class_id]))
                # the one path (camlens.geometry): ReLU, bilinear to the photo, / max; box at threshold x max
                cam_t = prepared.geometry.to_original(exp.raw[0, k])
                box = camlens_geometry.box(cam_t, request["threshold"])
                cam = cam_t.float().numpy()
                shown = f"p {probability:.2f}" if probability is not None else f"logit {float(exp.scores[0, k]):.2f}"
                caption = f"{label} {shown} ({exp.method})"
                picture = viz.draw_box(viz.overlay(photo.image, cam), box, caption, copy=False)
                files = {"overlay": f"{stem}.png", "map": f"{stem}.npy", "raw": f"{stem}_raw.png"}
                outcome.files[files["overlay"]] = (_png(picture, self.limits.display), "image/png")
                buffer = io.BytesIO()
                np.save(buffer, cam.astype(np.float32))
                outcome.files[files["map"]] = (buffer.getvalue(), "application/octet-stream")
                raw = exp.raw[0, k].float().numpy()
                outcome.files[files["raw"]] = (_png(viz.signed_map(raw), self.limits.display), "image/png")
                if exp.pixels is not None:
                    pix = camlens_geometry.resize(exp.pixels[0, k][None].float(), prepared.geometry.original)
                    files["pixels"] = f"{stem}_pixels.png"
                    shown_pixels = viz.pixel_image(pix[0].numpy())
                    outcome.files[files["pixels"]] = (_png(shown_pixels, self.limits.display), "image/png")
                target: dict[str, Any] = {
                    "class_id": class_id,
                    "label": label,
                    "logit": json_number(float(exp.scores[0, k])),
                    "probability": probability,
                    "box": box,
                    "raw_range": [json_number(float(raw.min())), json_number(float(raw.max()))],
                    "files": files,
                }
                if request["curves"]:
                    target["curves"] = self._curves(bundle, prepared, exp, k, class_id, request["steps"])
                entry["targets"].append(target)
            outcome.doc["methods"].append(entry)
        outcome.doc["seconds"] = round(time.perf_counter() - started, 4)
        return outcome

    def _curves(self, bundle: Any, prepared: _Prepared, exp: Any, k: int, class_id: int, steps: int) -> dict[str, Any]:
        """RISE's deletion and insertion curves of one map (camlens.metrics.faithfulness, default substrates)."""
        from camlens.metrics.faithfulness import deletion_curve, insertion_curve

        target = torch.tensor([class_id])
        out = {}
        for name, curve_of in (("deletion", deletion_curve), ("insertion", insertion_curve)):
            curve = curve_of(bundle.model, prepared.x, exp.maps[:, k], target, steps=steps)
            out[name] = {
                "fractions": [round(float(f), 6) for f in curve.fractions],
                "scores": [json_number(float(s)) for s in curve.scores[0]],
                "auc": json_number(float(curve.auc[0])),
            }
        return out


def _checked(request: Any, limits: Limits) -> dict[str, Any]:
    """The request's fields, typed and in range, or a RequestError naming the field."""
    if not isinstance(request, dict):
        raise RequestError("the request must be a JSON object")

    def text(key: str, default: Any = None) -> Any:
        value = request.get(key, default)
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{key} must be a string, got {type(value).__name__}")
        return value

    methods = request.get("methods")
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise RequestError("choose at least one method")
    if len(methods) > limits.max_methods:
        raise RequestError(f"at most {limits.max_methods} methods at once, got {len(methods)}")
    classes = request.get("classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
        raise RequestError("classes must be a list of class names or ids")
    topk = request.get("topk")
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int)):
        raise RequestError(f"topk must be an integer, got {topk!r}")
    threshold = request.get("threshold", 0.2)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise RequestError(f"threshold must be a number in (0, 1], got {threshold!r}")
    steps = request.get("steps", 20)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limits.max_steps:
        raise RequestError(f"steps must be an integer in 1 .. {limits.max_steps}, got {steps!r}")
    photo, model = text("photo"), text("model")
    if not photo:
        raise RequestError("upload a photo or pick a built-in one first")
    if not model:
        raise RequestError("choose a model")
    return {
        "photo": photo,
        "model": model,
        "methods": list(dict.fromkeys(methods)),
        "layer": text("layer") or None,
        "classes": [str(c).strip() for c in classes if str(c).strip()],
        "topk": topk,
        "threshold": float(threshold),
        "curves": bool(request.get("curves", False)),
        "steps": steps,
    }
