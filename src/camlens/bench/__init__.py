"""Applications built on camlens' public API, beside the library rather than inside it.

* :mod:`camlens.bench.wsol_digits`: the CAM paper's Tables 1 and 2 on handwritten digits (``camlens bench wsol``);
  its networks and training are in :mod:`camlens.bench.nets`, its tables in :mod:`camlens.bench.tables`, and its
  numbers come from :func:`camlens.evaluate.evaluate`, the evaluation every user runs.
"""

__all__: list[str] = []
