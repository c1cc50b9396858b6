"""``camlens app``: a local page to explore explanations interactively (the ``app`` extra).

Upload a photo or pick a built-in one, choose the model, methods, layer, classes and threshold, and see the
overlays side by side with boxes, labels and probabilities, the signed raw maps, the pixel-space images and
the deletion / insertion curves; download the maps (.npy, PNG) and a JSON of the result.

Offline by construction: a standard-library HTTP server (:mod:`camlens.app.server`) and one static page
(``static/``, no external URL in it; the Content-Security-Policy forbids any other origin), bound to
127.0.0.1 by default. What is computed and cached lives in :mod:`camlens.app.engine`, free of HTTP.

Examples:
    >>> from camlens.app import serve
    >>> serve({"efficientnet_lite0": "efficientnet_lite0"}, port=8765)  # doctest: +SKIP
"""

from camlens.app.engine import Limits, RequestError, Workspace
from camlens.app.server import App, serve

__all__ = ["App", "Limits", "RequestError", "Workspace", "serve"]
