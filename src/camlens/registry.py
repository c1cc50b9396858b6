"""The one list of methods: name -> class. It feeds ``explain``, the CLI's choices, the docs and the tests."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from camlens.methods.base import CAMMethod

__all__ = ["get_method", "methods", "register"]

_REGISTRY: dict[str, type[CAMMethod]] = {}

M = TypeVar("M", bound="type[CAMMethod]")


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available under ``name``."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def methods() -> list[str]:
    """Names of the registered methods, in registration order."""
    _load()
    return list(_REGISTRY)


def get_method(name: str) -> type[CAMMethod]:
    """The method class registered as ``name`` (case-insensitive; ``grad-cam`` == ``gradcam``).

    Raises:
        ValueError: unknown name, with the closest registered names.
    """
    _load()
    key = name.strip().lower()
    if key not in _REGISTRY:
        key = key.replace("-", "").replace("_", "")
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"closest: {', '.join(close)}; " if close else ""
        raise ValueError(f"unknown method {name!r}; {hint}available: {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def _load() -> None:
    # Importing the method modules runs their @register decorators.
    import camlens.methods  # noqa: F401
