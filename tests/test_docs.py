"""The public API's docstrings: every name in ``camlens.__all__`` is documented, and its example runs.

Each public name's docstring must hold an ``Examples:`` section of doctest lines (the Google-style section
mkdocstrings renders as code; griffe reads a singular ``Example:`` as an admonition of Markdown), and those
lines run here with :mod:`doctest` in the namespace :func:`example_namespace` builds (the same one the API
reference names at its top, ``docs/api.md``): ``camlens``, ``torch``, ``model`` (torchvision's ResNet-18,
10 classes, seeded random weights, eval mode) and ``x`` (a seeded (1, 3, 64, 64) batch). An example that raises
or prints something other than what it shows fails. The site build (``mkdocs build --strict``, in ``.ci/run``)
fails on broken cross-references; this file fails on an undocumented public name.
"""

from __future__ import annotations

import doctest
import inspect
import re
from typing import Any

import pytest
import torch
import torchvision

import camlens

# a section header of a Google-style docstring, as mkdocstrings (griffe) reads it
_EXAMPLES = re.compile(r"^\s*Examples:\s*$", re.MULTILINE)


def example_namespace() -> dict[str, Any]:
    """What every example may use without defining it (docs/api.md says the same)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(1, 3, 64, 64)
    return {"camlens": camlens, "torch": torch, "model": model, "x": x}


def _docstring(name: str) -> str:
    return inspect.getdoc(getattr(camlens, name)) or ""


@pytest.mark.parametrize("name", camlens.__all__)
def test_public_name_has_docstring_with_examples(name: str) -> None:
    doc = _docstring(name)
    assert doc, f"camlens.{name} has no docstring"
    match = _EXAMPLES.search(doc)
    assert match, f"camlens.{name}: no 'Examples:' section in its docstring"
    assert ">>>" in doc[match.end() :], f"camlens.{name}: its Example section holds no '>>>' line"


@pytest.mark.parametrize("name", camlens.__all__)
def test_public_example_runs(name: str, one_thread: None) -> None:
    obj = getattr(camlens, name)
    # the object's own docstring only (recurse=False): the examples of a class's methods are not public names
    tests = doctest.DocTestFinder(recurse=False).find(obj, f"camlens.{name}", globs=example_namespace())
    examples = [t for t in tests if t.examples]
    assert examples, f"camlens.{name}: no doctest found"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in examples:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"camlens.{name}: {result.failed} of {result.attempted} example lines failed"


def test_checker_catches_a_failing_example() -> None:
    """The runner above fails on a wrong expected output (so the examples test can fail)."""

    def wrong() -> None:
        """Example:
        >>> 1 + 1
        3
        """

    test = doctest.DocTestFinder(recurse=False).find(wrong, "wrong", globs={})[0]
    runner = doctest.DocTestRunner()
    runner.run(test, out=lambda _: None)
    assert runner.summarize(verbose=False).failed == 1
