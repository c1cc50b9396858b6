"""What camlens writes as JSON: strict numbers only (NaN and infinities become null).

Python's ``json`` writes NaN / Infinity by default, which strict readers (browsers' ``JSON.parse``, jq)
reject; every camlens writer passes ``allow_nan=False`` and first turns its values into these.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["number", "strict"]


def number(value: float) -> float | None:
    """A score as a JSON number rounded to 6 decimals, or None for NaN / inf (explain's records, the app)."""
    return round(value, 6) if math.isfinite(value) else None


def strict(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists, and NaN / inf as None."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [strict(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
