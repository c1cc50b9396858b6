"""Threads: calls on one model are serialised (per-model lock in ``camlens._state``), on different models not.

Every threaded result is compared with the serial result of the same call on an identical copy of the
model, so a call that sees another thread's forward (a hook counting its calls, a capture of its
activation, a layer choice traced during its forward) fails here even when it raises nothing.
"""

from __future__ import annotations

import copy
import gc
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camlens
from camlens import _state
from camlens.explanation import Explanation
from camlens.metrics.faithfulness import deletion_curve

METHODS = camlens.methods()
THREADS = 4
CALLS = 3
JOIN = 120.0  # seconds: a deadlock fails the test instead of hanging it

pytestmark = pytest.mark.usefixtures("one_thread")


class _Net(nn.Module):
    """conv -> act -> conv -> BN -> act (one ReLU module used twice, ``act@0`` / ``act@1``) -> GAP -> linear."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial running statistics, so a moved statistic would show
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.bn(self.head(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _inputs(n: int, seed: int = 1) -> list[torch.Tensor]:
    """One distinct batch per call: a result mixed up with another thread's would not match."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def _layer(method: str, layer: str | None) -> str | None:
    return layer if camlens.get_method(method).takes_layer else None


def _same(a: Explanation, b: Explanation) -> bool:
    pairs = [(a.raw, b.raw), (a.scores, b.scores)]
    if a.pixels is not None or b.pixels is not None:
        if a.pixels is None or b.pixels is None:
            return False
        pairs.append((a.pixels, b.pixels))
    if (a.targets is None) != (b.targets is None) or a.layer != b.layer:
        return False
    if a.targets is not None and b.targets is not None and not torch.equal(a.targets, b.targets):
        return False
    return all(x.shape == y.shape and torch.allclose(x, y, atol=1e-6, rtol=0) for x, y in pairs)


def _run(workers: list[Callable[[], None]], timeout: float = JOIN) -> list[BaseException]:
    """Start one thread per worker together (a barrier) and join them with a timeout; their exceptions."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=timeout)
            work()
        except BaseException as err:  # reported to the test, not swallowed
            errors.append(err)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    alive = sum(t.is_alive() for t in threads)
    assert not alive, f"{alive} thread(s) still running after {timeout} s: deadlock"
    return errors


# automatic layer (a probe forward) for every method, and a call counted from the end (``act@-1``,
# one counting forward) for those that take a layer
CASES = [(m, None) for m in METHODS] + [(m, "act@-1") for m in METHODS if camlens.get_method(m).takes_layer]


@pytest.mark.parametrize(("method", "layer"), CASES)
def test_threads_on_one_model_give_the_serial_results(method: str, layer: str | None) -> None:
    base = _Net()
    xs = _inputs(THREADS * CALLS)
    serial_model = copy.deepcopy(base)
    serial = [camlens.explain(serial_model, x, method=method, layer=layer, targets="top2") for x in xs]
    # a fresh copy: the threads also race for the first (automatic or @-1) layer resolution
    model = copy.deepcopy(base)
    results: dict[int, Explanation] = {}

    def work(t: int) -> Callable[[], None]:
        def run() -> None:
            for c in range(CALLS):
                i = t * CALLS + c
                results[i] = camlens.explain(model, xs[i], method=method, layer=layer, targets="top2")

        return run

    errors = _run([work(t) for t in range(THREADS)])
    assert not errors, f"{len(errors)} thread(s) raised: {errors[0]!r}"
    assert sorted(results) == list(range(THREADS * CALLS))
    wrong = [i for i in results if not _same(results[i], serial[i])]
    assert not wrong, f"{len(wrong)} of {len(results)} threaded results differ from the serial ones"
    assert _hooks(model) == 0
    assert torch.equal(model.bn.running_mean, base.bn.running_mean)


@pytest.mark.parametrize("method", METHODS)
def test_an_exception_in_one_thread_leaves_the_others_right(method: str) -> None:
    base = _Net()
    xs = _inputs(THREADS * CALLS, seed=2)
    serial_model = copy.deepcopy(base)
    serial = [camlens.explain(serial_model, x, method=method, targets=[1, 3]) for x in xs]
    model = copy.deepcopy(base)
    results: dict[int, Explanation] = {}
    raised: list[BaseException] = []

    def raising_target(out: torch.Tensor) -> torch.Tensor:
        raise KeyError("target failed")

    def work(t: int) -> Callable[[], None]:
        def run() -> None:
            for c in range(CALLS):
                i = t * CALLS + c
                if t % 2 == 0:  # threads 0 and 2 fail every call, 1 and 3 must not notice
                    # CAM rejects a callable target up front (ValueError); the others call it (KeyError)
                    with pytest.raises((KeyError, ValueError)) as err:
                        camlens.explain(model, xs[i], method=method, targets=raising_target)
                    raised.append(err.value)
                else:
                    results[i] = camlens.explain(model, xs[i], method=method, targets=[1, 3])

        return run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. CAM's "needs class ids" path warns nothing, others may
        errors = _run([work(t) for t in range(THREADS)])
    assert not errors, f"{len(errors)} thread(s) failed: {errors[0]!r}"
    assert len(raised) == (THREADS // 2) * CALLS
    assert sorted(results) == [t * CALLS + c for t in range(1, THREADS, 2) for c in range(CALLS)]
    assert all(_same(results[i], serial[i]) for i in results)
    assert _hooks(model) == 0, "hooks left on the model"
    assert not nn.modules.module._global_forward_hooks and not nn.modules.module._global_forward_pre_hooks


@pytest.mark.parametrize(
    ("outer", "inner"), [("gradcam", "gradcam"), ("guided-gradcam", "scorecam"), ("eigencam", "eigencam")]
)
def test_a_target_calling_camlens_on_the_same_model_does_not_deadlock(outer: str, inner: str) -> None:
    model = _Net()
    x = _inputs(1)[0]
    expected_inner = camlens.explain(copy.deepcopy(model), x, method=inner, targets="top2")
    expected_outer = camlens.explain(copy.deepcopy(model), x, method=outer, targets=[2, 2])
    inner_results: list[Explanation] = []
    outer_results: list[Explanation] = []

    def target(out: torch.Tensor) -> torch.Tensor:
        if not inner_results:  # once: Score-CAM would re-apply the target to every masked batch
            inner_results.append(camlens.explain(model, x, method=inner, targets="top2"))
        return out[:, 2]

    errors = _run([lambda: outer_results.append(camlens.explain(model, x, method=outer, targets=target))])
    assert not errors, repr(errors[0])
    assert _same(inner_results[0], expected_inner)
    assert torch.allclose(outer_results[0].raw, expected_outer.raw[:, :1], atol=1e-6, rtol=0)
    assert _hooks(model) == 0


def test_a_metric_target_calling_camlens_on_the_same_model_does_not_deadlock() -> None:
    model = _Net()
    x = _inputs(1)[0][:1]
    exp = camlens.explain(model, x, method="gradcam")
    assert exp.targets is not None
    cls = int(exp.targets[0, 0])
    expected = deletion_curve(copy.deepcopy(model), x, exp.maps[:, 0], [cls], steps=4)
    inner: list[Explanation] = []

    def target(out: torch.Tensor) -> torch.Tensor:
        inner.append(camlens.explain(model, x, method="eigencam"))  # runs inside the metric's forwards
        return out.softmax(1)[:, cls]

    curves: list[Any] = []
    errors = _run([lambda: curves.append(deletion_curve(model, x, exp.maps[:, 0], target, steps=4))])
    assert not errors, repr(errors[0])
    assert inner and _same(inner[0], camlens.explain(copy.deepcopy(model), x, method="eigencam"))
    assert torch.allclose(torch.as_tensor(curves[0].scores), torch.as_tensor(expected.scores), atol=1e-6, rtol=0)
    assert _hooks(model) == 0


def test_the_lock_is_per_model() -> None:
    a, b = _Net(), _Net(seed=1)
    x = _inputs(1)[0]
    expected_a = camlens.explain(copy.deepcopy(a), x)
    expected_b = camlens.explain(copy.deepcopy(b), x)
    done: dict[str, Explanation] = {}
    on_a = threading.Thread(target=lambda: done.update(a=camlens.explain(a, x)), daemon=True)
    on_b = threading.Thread(target=lambda: done.update(b=camlens.explain(b, x)), daemon=True)
    with _state.model_lock(a):  # another thread holds model A
        on_a.start()
        on_b.start()
        on_b.join(JOIN)
        assert not on_b.is_alive() and _same(done["b"], expected_b), "a call on model B waited for model A's lock"
        on_a.join(0.3)
        assert on_a.is_alive() and "a" not in done, "a call on model A ran while its lock was held"
    on_a.join(JOIN)
    assert not on_a.is_alive() and _same(done["a"], expected_a)


def test_calls_on_two_models_overlap() -> None:
    """Both calls must be inside their locked region at once: a global lock would deadlock here."""
    a, b = _Net(), _Net(seed=1)
    x = _inputs(1)[0]
    inside = threading.Barrier(2)
    results: dict[str, Explanation] = {}

    def meet(out: torch.Tensor) -> torch.Tensor:
        inside.wait(timeout=30)  # raises BrokenBarrierError if the other call cannot start
        return out[:, 0]

    errors = _run(
        [
            lambda: results.update(a=camlens.explain(a, x, method="gradcam", targets=meet)),
            lambda: results.update(b=camlens.explain(b, x, method="gradcam", targets=meet)),
        ]
    )
    assert not errors, repr(errors[0])
    assert torch.allclose(results["a"].raw, camlens.explain(copy.deepcopy(a), x, targets=0).raw, atol=1e-6, rtol=0)
    assert torch.allclose(results["b"].raw, camlens.explain(copy.deepcopy(b), x, targets=0).raw, atol=1e-6, rtol=0)


def _locks_of_new_model(threads: int) -> tuple[list[Any], weakref.ref[nn.Module]]:
    model = _Net()
    locks: list[Any] = []
    errors = _run([lambda: locks.append(_state.model_lock(model)) for _ in range(threads)])
    assert not errors
    with _state.model_lock(model), _state.model_lock(model):  # re-entrant
        pass
    camlens.explain(model, _inputs(1)[0])
    return locks, weakref.ref(model)


def test_one_lock_per_model_created_once_and_not_keeping_the_model_alive() -> None:
    locks, model = _locks_of_new_model(8)
    gc.collect()
    assert model() is None, "the lock table keeps the model alive"
    assert len(locks) == 8 and all(lock is locks[0] for lock in locks)
    assert _state.model_lock(_Net()) is not locks[0]
