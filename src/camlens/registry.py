"""The one list of methods: name -> class. It feeds ``explain``, the CLI's choices, the docs and the tests."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from camlens.methods.base import CAMMethod

__all__ = ["get_method", "methods", "register", "unregister"]

_REGISTRY: dict[str, type[CAMMethod]] = {}
_KEYS: dict[str, str] = {}  # _key(name) -> registered name

M = TypeVar("M", bound="type[CAMMethod]")


def _key(name: str) -> str:
    """The lookup key of a name: lower case, without separators (``Guided_Backprop`` -> ``guidedbackprop``)."""
    return re.sub(r"[\s_\-]", "", name.strip().lower())


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available under ``name``."""

    def decorate(cls: M) -> M:
        clash = _KEYS.get(_key(name))
        if clash is not None:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[clash].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        _KEYS[_key(name)] = name
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a method registered as ``name`` (for plugins and tests that register temporary methods)."""
    registered = _KEYS.pop(_key(name), None)
    if registered is not None:
        del _REGISTRY[registered]


def methods() -> list[str]:
    """Names of the registered methods, in registration order (the CLI's ``--method`` choices).

    Examples:
        >>> names = camlens.methods()
        >>> "gradcam" in names and "lime" in names
        True
    """
    _load()
    return list(_REGISTRY)


def get_method(name: str) -> type[CAMMethod]:
    """The method class registered as ``name``, ignoring case and separators (``Grad_CAM`` == ``gradcam``).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: unknown name, with the closest registered names.

    Examples:
        >>> camlens.get_method("Grad_CAM") is camlens.GradCAM
        True
    """
    if not isinstance(name, str):
        raise TypeError(f"method must be a name (str) such as 'gradcam', got {type(name).__name__}")
    _load()
    registered = _KEYS.get(_key(name))
    if registered is None:
        close = difflib.get_close_matches(name.strip().lower(), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"closest: {', '.join(close)}; " if close else ""
        raise ValueError(f"unknown method {name!r}; {hint}available: {', '.join(_REGISTRY)}")
    return _REGISTRY[registered]


def _load() -> None:
    # Importing the method modules runs their @register decorators.
    import camlens.methods  # noqa: F401
