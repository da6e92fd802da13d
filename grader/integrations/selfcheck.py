"""The self-checks students call inside their notebook, like the lecture's `cmp`.

They also score the notebook's test cells under nbgrader (each returns or sums to the cell's points),
so they print to standard output only: nbgrader gives a test cell nothing if it writes to stderr,
and a PyTorch warning would.

A wrong gradient's line names the likely mistake as `grader check` does (`grader.hints.with_hint`, the
same function), wherever the hint needs nothing the kernel lacks: a sign, a factor (n from the batch's
targets), a transpose, keepdim, the axis of a sum, zeros, a mix-up with another tensor's gradient. The
kernel offers the gradients autograd filled in and the targets in the notebook's own namespace; the
per-use parts of a gradient (`+=` forgotten) it cannot offer, so that hint is the grader's alone.
Never broadcast, one line per variable.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from grader import assignment as assignments
from grader import rubric
from grader.compare import cmp_line, compare
from grader.errors import GraderError
from grader.hints import with_hint
from grader.reference import as_reference
from grader.rubric import Rubric, Tolerance
from grader.score import as_number


def _own_rubric() -> Rubric | None:
    """The rubric of the notebook this kernel runs, from the copy its release carries (`grader.embedded`): the
    notebook is found where Jupyter (`JPY_SESSION_NAME`) or VS Code (`__vsc_ipynb_file__`) says it is. None
    where neither says, or the notebook carries no copy."""
    main = _notebook_namespace()
    found = os.environ.get("JPY_SESSION_NAME") or main.get("__vsc_ipynb_file__") or main.get("__session__")
    if isinstance(found, str) and found.endswith(".ipynb"):
        candidates = [Path(found)]
    else:
        # nbgrader's autograde (nbclient) says nothing, but runs the notebook in its own folder: the notebooks
        # there that carry a copy, if they are all of one assignment
        candidates = sorted(Path.cwd().glob("*.ipynb"))[:20]
    rubrics = []
    for path in candidates:
        try:
            found_rubric = _rubric_in(path, path.stat().st_mtime_ns)
        except (OSError, ValueError, GraderError):
            continue
        if found_rubric is not None:
            rubrics.append(found_rubric)
    if not rubrics or len({r.assignment for r in rubrics}) > 1:
        return None
    return rubrics[0]


@functools.lru_cache(maxsize=4)
def _rubric_in(path: Path, stamp: int) -> Rubric | None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    grader = raw.get("metadata", {}).get("grader", {})
    carried = grader.get("release", {}).get("rubric") if isinstance(grader, dict) else None
    if not isinstance(carried, dict):
        return None
    return rubric.parse({"notebook": path.name, **carried}, path)


def _tolerance_for(variable: str, loosest: bool = False) -> Tolerance:
    # The rubric's tolerance for this variable, so that a self-check passes when the grader will pass it: the
    # notebook's own assignment's, never another assignment's found by the variable's name.
    own = _own_rubric()
    found = {v.tolerance for ex in (own.exercises if own else ()) for v in ex.variables if v.name == variable}
    if not found:
        return Tolerance(rubric.DEFAULT_RTOL, rubric.DEFAULT_ATOL)
    # the same name in two exercises (d_C in Exercises 1 and 4): check() is the plain exercises' self-check
    # and takes the stricter one; check_training() grades the training exercise's looser one
    pick = max if loosest else min
    return Tolerance(rtol=pick(t.rtol for t in found), atol=pick(t.atol for t in found))


def _targets_names() -> set[str]:
    own = _own_rubric()
    if own is not None:
        return {own.targets} if own.targets else set()
    # (no copy to read: the names the shipped assignments give their targets, for hints only)
    return {t for name in assignments.known() if (t := assignments.rubric_of(name).targets)}


def _notebook_namespace() -> Mapping[str, object]:
    """The namespace the notebook's cells run in (in a Jupyter kernel, IPython's `__main__` is the notebook's)."""
    main = sys.modules.get("__main__")
    return vars(main) if main is not None else {}


def _context(
    tensor: torch.Tensor, namespace: Mapping[str, object]
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """What `namespace` offers the hints: the gradient autograd filled in for every other tensor (named as the
    grader names their variables, `d_<name>`), and the batch's target classes (the rubric's `targets`, `Yb`)."""
    others: dict[str, torch.Tensor] = {}
    targets = None
    names = _targets_names()
    for key, value in list(namespace.items()):
        if key.startswith("_") or type(value) is not torch.Tensor or value is tensor:
            continue
        if key in names and value.ndim == 1 and not value.is_floating_point():
            targets = value
        # (a tensor that is neither a leaf nor retained warns on .grad, and has none)
        if (value.is_leaf or value.retains_grad) and type(value.grad) is torch.Tensor:
            others[f"d_{key}"] = value.grad.detach()
    return others, targets


def check(
    name: str,
    actual: object,
    tensor: torch.Tensor,
    tolerance: Tolerance | None = None,
    *,
    namespace: Mapping[str, object] | None = None,
) -> bool:
    """Print one cmp-style line comparing `actual` with `tensor.grad`; return whether it passes. A wrong answer's
    line names the likely mistake, as `grader check` does.

    Parameters
    ----------
    name: the label to print, e.g. `"logits"`.
    actual: your gradient, e.g. `d_logits`.
    tensor: the forward-pass tensor whose `.grad` PyTorch filled in, e.g. `logits`.
    tolerance: how close is close enough; by default the assignment's rubric for `d_<name>`.
    namespace: where the other gradients and the targets are, for hints; by default the notebook's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = getattr(tensor, "grad", None)
        if not isinstance(expected, torch.Tensor):
            print(f"{name:15s} | no reference: {name}.grad is None -- run the forward pass and loss.backward() first")
            return False
        expected = expected.detach()
        result = compare(f"d_{name}", actual, expected, tolerance or _tolerance_for(f"d_{name}"))
        if not result.passed:
            others, targets = _context(tensor, _notebook_namespace() if namespace is None else namespace)
            result = with_hint(
                result,
                f"d_{name}",
                actual,
                expected,
                others=others,
                n=targets.numel() if targets is not None else None,
                targets=targets,
            )
    print(cmp_line(name, result))
    return result.passed


def check_value(name: str, actual: object, expected: object, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Print one cmp-style line comparing a value (a number, a tensor, a mask) with `expected`; return whether
    it passes. For the test cells of values exercises, whose expected values nbgrader keeps hidden."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = as_reference(expected)
        if isinstance(want, str):
            print(f"{name:15s} | no reference: {want}")
            return False
        got = as_reference(actual) if isinstance(actual, (bool, int, float, list, tuple)) else actual
        result = compare(name, as_number(got, want), want, Tolerance(rtol, atol), noun="value")
    print(cmp_line(name, result))
    return result.passed


def check_training(
    forward: Callable,
    backward: Callable,
    parameters: Sequence[torch.Tensor],
    names: Sequence[str],
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    steps: int = 25,
    lr: float = 0.1,
    loss_rtol: float = 1e-4,
) -> int:
    """Train for `steps` steps with your `backward`, then with autograd's gradients; return the points.

    Both runs start from the current weights and the generator's current state, and both are put back
    afterwards, so the notebook's own training loop is not affected. The gradients your `backward`
    returns are compared with autograd's (at the same weights, on the same batch) at the first and at
    the last step; the minibatch loss at the last step is compared with the autograd run's.

    Parameters
    ----------
    forward: `(Xb, Yb) -> (loss, intermediates)`, reading the weights in `parameters`.
    backward: your function, `(Xb, Yb, *intermediates) -> gradients`, one per parameter.
    parameters: the weights, updated in place (as the training loop does) and restored at the end.
    names: a label per parameter, e.g. `"W1"`.
    X, Y: the training set; each step draws `batch_size` rows with `generator`.

    Returns one point per parameter whose gradient passes at both steps, plus one for the loss.
    """
    if len(names) != len(parameters):
        raise ValueError(f"{len(names)} names for {len(parameters)} parameters")
    start = [p.detach().clone() for p in parameters]
    run = _Training(forward, backward, parameters, names, X, Y, batch_size, generator, steps, lr, start)
    state = generator.get_state()
    passed = dict.fromkeys(names, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                mine = run.train(passed, yours=True)
            except Exception as e:  # the student's mistake, not ours: say so on stdout
                # the run stopped before its last step, so no gradient was checked there: no points
                print(f"backward() or the update with its gradients raised {type(e).__name__}: {e}")
                return 0
            finally:
                run.restore(state)
            reference = run.train(passed, yours=False)
        finally:
            run.restore(state)
    loss_ok = abs(mine - reference) <= loss_rtol * abs(reference)
    print(
        f"{'loss @' + str(steps):15s} | yours: {mine:.6f} | autograd: {reference:.6f} | "
        f"{'close' if loss_ok else 'too far apart'}"
    )
    return sum(passed.values()) + int(loss_ok)


@dataclass(frozen=True)
class _Training:
    """`check_training`'s arguments: a short training run, with the student's `backward` or with autograd."""

    forward: Callable
    """`(Xb, Yb) -> (loss, intermediates)`, reading the weights in `parameters`."""
    backward: Callable
    """The student's `(Xb, Yb, *intermediates) -> gradients`, one per parameter."""
    parameters: Sequence[torch.Tensor]
    """The weights, updated in place."""
    names: Sequence[str]
    """A label per parameter."""
    X: torch.Tensor
    """The training set's inputs."""
    Y: torch.Tensor
    """The training set's targets."""
    batch_size: int
    """Rows drawn per step."""
    generator: torch.Generator
    """What draws them."""
    steps: int
    """Steps per run."""
    lr: float
    """The learning rate of the update."""
    start: list[torch.Tensor]
    """The weights before training, as both runs start."""

    def autograd_gradients(self, Xb: torch.Tensor, Yb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Autograd's gradients of the loss on this batch at the current weights (None where one is unused)."""
        with torch.enable_grad():
            return torch.autograd.grad(self.forward(Xb, Yb)[0], list(self.parameters), allow_unused=True)

    def train(self, passed: dict[str, bool], yours: bool) -> float:
        """The loss at the last step of a run with your gradients (each checked at the first and last step, the
        verdicts printed and kept in `passed`) or autograd's."""
        loss = torch.tensor(float("nan"))
        for step in range(self.steps):
            ix = torch.randint(0, self.X.shape[0], (self.batch_size,), generator=self.generator)
            Xb, Yb = self.X[ix], self.Y[ix]
            with torch.no_grad():
                loss, intermediates = self.forward(Xb, Yb)
            if not yours:
                grads = self.autograd_gradients(Xb, Yb)
            else:
                with torch.no_grad():
                    grads = tuple(self.backward(Xb, Yb, *intermediates))
                if len(grads) != len(self.parameters):
                    raise ValueError(
                        f"backward() returned {len(grads)} gradients for {len(self.parameters)} parameters"
                    )
                if step in (0, self.steps - 1):
                    self.check(step, Xb, Yb, grads, passed)
            with torch.no_grad():
                for p, grad in zip(self.parameters, grads):
                    p.data += -self.lr * grad
        return float(loss)

    def check(
        self, step: int, Xb: torch.Tensor, Yb: torch.Tensor, grads: tuple[torch.Tensor, ...], passed: dict[str, bool]
    ) -> None:
        """Compare your gradients at `step` with autograd's, print a line for each, and keep the verdicts."""
        wants = [
            torch.zeros_like(s) if w is None else w.detach()
            for s, w in zip(self.start, self.autograd_gradients(Xb, Yb))
        ]
        for name, got, want in zip(self.names, grads, wants):
            result = compare(f"d_{name}", got, want, _tolerance_for(f"d_{name}", loosest=True))
            # the other parameters' gradients at this step, and this batch: as the grader's hints
            result = with_hint(
                result,
                f"d_{name}",
                got,
                want,
                n=self.batch_size,
                targets=Yb,
                others={f"d_{o}": w for o, w in zip(self.names, wants) if o != name},
            )
            print(cmp_line(f"{name} @{step + 1}", result))
            passed[name] = passed[name] and result.passed

    def restore(self, state: torch.Tensor) -> None:
        """The weights and the generator put back as they were before training."""
        with torch.no_grad():
            for p, s in zip(self.parameters, self.start):
                p.data.copy_(s)
        self.generator.set_state(state)
