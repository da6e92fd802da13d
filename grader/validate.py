"""For authors: does an assignment grade what it should? (`grader validate NAME`)

Five checks, each a list of findings; an error makes the exit code 1, a warning does not (unless strict):

1. the rubric: unknown keys, and cells, variables, parameters and test cells the notebooks do not have
   (`grader.rubric`, `grader.infer`), and a release older than its solution;
2. the solution earns full marks, in its own run and every hidden run; the release earns 0 with every
   variable `missing`;
3. tolerances: the solution's own rounding noise against autograd, over `seeds` runs of the seed parameter
   (more than the hidden runs), per variable against its `atol` (near-zero gradients need a looser one);
4. mistakes: the typical mistakes `grader.mistakes` derives from the solution's answer lines, and those the
   author wrote (`source/NAME/mistakes/*.ipynb`, each naming in `metadata.grader.mistake` the variable it
   must cost, and optionally a word its hint must contain), each graded as a submission: caught or not,
   what it cost, the hint. Two mistakes that give the same values are one. A mistake not caught, caught
   without a hint, or costing more than its own variable is a warning, with the reason where the grader
   can tell it (the values are the right ones: a transpose of a symmetric tensor, a sum over a size-1 axis).

Every submission runs in the sandbox like a class's, through one warm pool. Only the grading calls are
not pure; the verdicts are read from the reports' fields, never from their messages.
"""

from __future__ import annotations

import ast
import concurrent.futures
import copy
import hashlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from grader import assignment as assignments
from grader import mistakes as derived
from grader import notebook
from grader.assignment import Assignment
from grader.course import Location
from grader.errors import BrokenAssignment, GraderError
from grader.grade import grade_with_runs
from grader.infer import assigned
from grader.sandbox.pool import Backend, Pool
from grader.scan import parse
from grader.verdicts import PASSING, GradedRun, Report


@dataclass(frozen=True)
class Noise:
    """The solution's distance from autograd for one variable, at its worst over the tolerance runs."""

    variable: str
    """The graded variable."""
    excess: float
    """Largest |solution - autograd| - rtol * |autograd| seen: what `atol` must cover."""
    atol: float
    """The rubric's atol for it."""
    scale: float
    """Largest |autograd| entry seen: a gradient whose entries are all near zero is all rounding noise."""

    @property
    def fits(self) -> bool:
        """Whether the rubric's atol covers the noise."""
        return self.excess <= self.atol

    def suggestion(self) -> float:
        """An atol with a margin of 100 over the noise, rounded up to a power of ten."""
        return 10.0 ** math.ceil(math.log10(max(self.excess, 1e-12) * 100))


@dataclass(frozen=True)
class MistakeResult:
    """One mistake graded as a submission."""

    name: str
    """Its description (`d_W2: transpose dropped (...)`) or the author's notebook's file name."""
    kind: str
    """A `grader.mistakes.KINDS` entry, or `written` for the author's own."""
    expected: str | None
    """The variable it must cost (the one its line assigns); None for a temporary's line."""
    cost: tuple[str, ...]
    """The variables that lost points."""
    hint: str
    """The hint the expected variable (else the first that lost points) was given."""
    verdict: str
    """`caught`, `not caught`, `no hint`, `costs more`, `wrong variable` or `same as` another."""
    why: str = ""
    """What explains a verdict other than `caught`, where the grader can tell."""


@dataclass(frozen=True)
class Validation:
    """Everything `grader validate` found about one assignment."""

    name: str
    """The assignment."""
    errors: tuple[str, ...]
    """What makes the assignment unfit to hand out (exit 1)."""
    warnings: tuple[str, ...]
    """What the author should look at (exit 1 only with --strict)."""
    noise: tuple[Noise, ...] = ()
    """Per variable, the solution's rounding noise against its atol."""
    seeds: int = 0
    """How many runs the noise was measured over."""
    mistakes: tuple[MistakeResult, ...] = ()
    """Each mistake graded."""
    seconds: float = 0.0
    """How long it took."""
    stats: dict[str, int] = field(default_factory=dict)
    """Counts: mistakes derived, written, distinct, caught, hinted."""
    solution: str = ""
    """What the solution earned, in one line."""
    release: str = ""
    """What the untouched release earned, in one line."""

    def exit_code(self, strict: bool = False) -> int:
        """0 when it holds, 1 on errors (and on warnings when `strict`)."""
        return 1 if self.errors or (strict and self.warnings) else 0


def validate(
    location: Location,
    *,
    seeds: int = 20,
    with_mistakes: bool = True,
    jobs: int = 3,
    backend: Backend | None = None,
) -> Validation:
    """Run the checks on the assignment at `location` (see the module's docstring)."""
    started = time.monotonic()
    try:
        graded = assignments.load_at(location)
    except BrokenAssignment as e:  # (every problem, each on its own line)
        return Validation(location.name, e.problems, ())
    except GraderError as e:
        return Validation(location.name, (str(e),), ())
    errors: list[str] = _stale(graded) + _test_points(graded)
    warnings: list[str] = _ungraded(graded)
    with (
        tempfile.TemporaryDirectory(prefix="grader-validate-") as tmp,
        Pool(backend=backend, jobs=jobs) as pool,
    ):
        scratch = Path(tmp)
        solution = _solution_copy(graded, scratch)
        if solution is None:
            errors.append(f"{location.name}: no solution notebook here ({location.solution}): nothing to check")
            return Validation(location.name, tuple(errors), ())
        report, runs, wrong, solved, released = _solution_and_release(graded, solution, pool)
        errors += wrong
        noise, count = _noise(graded, solution, report, runs, seeds, pool)
        errors += _noisy(noise, count)
        results: list[MistakeResult] = []
        if with_mistakes and not errors:
            zero = {n.variable for n in noise if n.scale <= n.atol}
            results = _mistakes(graded, runs, scratch, pool, jobs, zero)
            warnings += [f"{m.name}: {m.verdict}" + (f" ({m.why})" if m.why else "") for m in results if _warn(m)]
            warnings += _untold(graded, results, zero)
    return Validation(
        location.name,
        tuple(errors),
        tuple(warnings),
        tuple(noise),
        count,
        tuple(results),
        time.monotonic() - started,
        _stats(results),
        solved,
        released,
    )


def _solution_and_release(
    graded: Assignment, solution: Path, pool: Pool
) -> tuple[Report, list[GradedRun], list[str], str, str]:
    """The solution graded (its report and runs); what is wrong with its grade and the untouched release's (full
    marks and zero expected); and each grade in one line."""
    report, runs = grade_with_runs(solution, assignment=graded, pool=pool)
    errors = _full_marks(report)
    untouched = grade_with_runs(graded.location.released, assignment=graded, pool=pool)[0]
    errors += _zero(untouched)
    hidden = len(report.runs) - 1
    solved = f"{report.score:g}/{report.max_score:g} in its own run and {hidden} hidden run{'s' * (hidden != 1)}"
    missing = sum(v.status == "missing" for v in untouched.variables)
    released = f"{untouched.score:g}/{untouched.max_score:g}, {missing} of {len(untouched.variables)} missing"
    return report, runs, errors, solved, released


def _noisy(noise: list[Noise], count: int) -> list[str]:
    """A variable whose rounding noise over `count` runs is above its atol, with the atol to set instead."""
    errors = []
    for n in noise:
        if not n.fits:
            near = " (its entries are all near zero: rounding noise is all there is)" if n.scale < 1e-6 else ""
            errors.append(
                f"{n.variable}: the solution differs from autograd by up to {n.excess:.2g} over {count} runs, "
                f"above its atol {n.atol:g}{near}: set [variable.{n.variable}] atol = {n.suggestion():g}"
            )
    return errors


def _stats(results: list[MistakeResult]) -> dict[str, int]:
    """The counts of the mistakes: derived, written, distinct, caught, hinted."""
    return {
        "derived": sum(m.kind != "written" for m in results),
        "written": sum(m.kind == "written" for m in results),
        "distinct": sum(m.verdict != "same as" for m in results),
        "caught": sum(m.verdict in ("caught", "no hint", "costs more") for m in results),
        "hinted": sum(bool(m.hint) for m in results if m.verdict != "same as"),
    }


def _warn(m: MistakeResult) -> bool:
    return m.verdict not in ("caught", "same as")


def _test_points(graded: Assignment) -> list[str]:
    """An nbgrader test cell worth other points than its exercise grades: nbgrader's gradebook and the grader's
    would disagree on the total."""
    points = {}
    for cell in graded.released.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if isinstance(meta, dict) and meta.get("grade") is True and notebook.grade_id(cell):
            points[notebook.grade_id(cell)] = meta.get("points")
    out = []
    by_cell: dict[str, float] = {}
    for ex in graded.rubric.exercises:
        if ex.test_cell is not None:
            by_cell[ex.test_cell] = by_cell.get(ex.test_cell, 0.0) + ex.max_score
    for cell, total in by_cell.items():
        given = points.get(cell)
        if isinstance(given, int | float) and float(given) != total:
            out.append(
                f"test cell {cell} is worth {given:g} points in nbgrader, but its exercise grades {total:g}: set the "
                f"cell's points to {total:g} (or the variables' points in the rubric)"
            )
    return out


def _ungraded(graded: Assignment) -> list[str]:
    """`d_` names the solution's answer cells assign that no exercise grades: a stub line left out of the
    release, so students are not asked for it (and their check cell may still name it)."""
    if graded.solution is None:
        return []
    graded_names = {v.name for ex in graded.rubric.exercises for v in ex.graded}
    cells = {ex.cell for ex in graded.rubric.exercises if ex.plain}
    out = []
    for cell in graded.solution.cells:
        gid = notebook.grade_id(cell)
        if cell.cell_type == "code" and gid in cells:
            for name in assigned(cell.source):
                if name not in graded_names:
                    out.append(
                        f"the solution's cell {gid} assigns {name}, which is not graded: the release has no "
                        f"`{name} = None` line for it"
                    )
    return out


def _stale(graded: Assignment) -> list[str]:
    """The release made before the solution's last change: the class would get an old notebook."""
    loc = graded.location
    if loc.origin != "course" or loc.solution is None:
        return []
    if loc.solution.stat().st_mtime_ns > loc.released.stat().st_mtime_ns:
        return [
            f"{loc.released} is older than the solution {loc.solution}: run `grader release {loc.name}` "
            "(students would get the old notebook)"
        ]
    return []


def _solution_copy(graded: Assignment, scratch: Path) -> Path | None:
    """The solution as a student would hand it in: its file name the release's, outputs cleared."""
    if graded.solution is None:
        return None
    nb = copy.deepcopy(graded.solution)
    nb.metadata.setdefault("grader", {})["assignment"] = graded.name
    path = scratch / "solution" / graded.rubric.released.name
    path.parent.mkdir()
    nbformat.write(nb, path)
    return path


def _full_marks(report: Report) -> list[str]:
    out = [
        f"the solution's {run.label} did not run to the end: {run.error}"
        for run in report.runs
        if run.status != "graded"
    ]
    for v in report.variables:
        if v.points < v.max_points:
            out.append(f"the solution loses points on {v.name} ({v.status}): {v.message}")
    return out


def _zero(report: Report) -> list[str]:
    """The untouched release must earn nothing, every variable `missing` (its `d_x = None` lines)."""
    out = []
    if report.score > 0:
        earned = [v.name for v in report.variables if v.status in PASSING]
        out.append(f"the release earns {report.score:g} points untouched ({', '.join(earned)}): answers are given away")
    others = [f"{v.name} ({v.status})" for v in report.variables if v.status != "missing"]
    if others:
        why = f"; it did not run to the end: {report.error}" if report.status != "graded" else ""
        out.append(f"the untouched release should leave every variable missing, but: {', '.join(others)}{why}")
    return out


def _seed_parameter(graded: Assignment) -> str | None:
    """The parameter that chooses the random draw, read from the release: the first whole-number parameter its
    cells pass to a `manual_seed(...)` (`torch.Generator().manual_seed(seed)`, `torch.manual_seed(seed)`)."""
    for source in graded.cells.values():
        try:
            tree = parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "manual_seed"
                and node.args
                and isinstance(node.args[0], ast.Name)
                and type(graded.published.get(node.args[0].id)) is int
            ):
                return node.args[0].id
    return None


def _noise(
    graded: Assignment, solution: Path, report: Report, runs: list[GradedRun], seeds: int, pool: Pool
) -> tuple[list[Noise], int]:
    """The solution's worst distance from autograd per variable, over its own runs and `seeds` seeds."""
    all_runs = list(runs)
    seed = _seed_parameter(graded)
    if seed is not None:
        base = graded.published[seed]
        assert isinstance(base, int)  # (what _seed_parameter checked)
        for i in range(1, max(0, seeds - len(runs)) + 1):
            all_runs += grade_with_runs(
                solution, assignment=graded, parameters={seed: base + i}, hidden_runs=(), pool=pool
            )[1]
    import torch  # (not before the pool's workers start, as in grader.grade: loaded by now)

    out = []
    for ex in graded.rubric.exercises:
        if not ex.plain:
            continue
        for var in ex.variables:
            excess, scale = 0.0, 0.0
            for run in all_runs:
                value, expected = run.captured.values.get((ex.id, var.name)), run.reference.get(ex.reference_key(var))
                if not isinstance(value, torch.Tensor) or not isinstance(expected, torch.Tensor):
                    continue
                if value.shape != expected.shape:
                    continue
                a, e = value.double(), expected.double()
                excess = max(excess, float(((a - e).abs() - var.tolerance.rtol * e.abs()).max()))
                scale = max(scale, float(e.abs().max()))
            out.append(Noise(var.name, excess, var.tolerance.atol, scale))
    return out, len(all_runs)


@dataclass(frozen=True)
class _Submission:
    name: str
    kind: str
    expected: str | None
    word: str
    path: Path
    problem: str = ""
    """What is wrong with the author's own mistake notebook (reported instead of grading it)."""


def _untold(graded: Assignment, results: list[MistakeResult], zero: set[str]) -> list[str]:
    """The variables that mistakes of their own line were aimed at, none of which was caught."""
    out = []
    for ex in graded.rubric.exercises:
        for var in ex.variables:
            aimed = [m for m in results if m.expected == var.name and m.verdict != "same as"]
            if aimed and not any(var.name in m.cost for m in aimed):
                why = (
                    "its gradient is zero up to rounding" if var.name in zero else "the mistakes leave its value right"
                )
                out.append(f"{var.name}: none of the {len(aimed)} mistakes of its own line is caught ({why})")
    return out


def _mistakes(
    graded: Assignment, runs: list[GradedRun], scratch: Path, pool: Pool, jobs: int, zero: set[str]
) -> list[MistakeResult]:
    """Grade every derived and written mistake through the pool, `jobs` at a time."""
    todo = _derived(graded, scratch) + _written(graded)
    right = _fingerprint(runs[0]) if runs else ""
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as threads:
        graded_all = list(threads.map(lambda s: grade_with_runs(s.path, assignment=graded, pool=pool), todo))
    seen: dict[str, str] = {}
    out = []
    for sub, (report, sub_runs) in zip(todo, graded_all):
        print_ = _fingerprint(sub_runs[0])
        if print_ in seen and sub.kind != "written":
            out.append(MistakeResult(sub.name, sub.kind, sub.expected, (), "", "same as", seen[print_]))
            continue
        seen.setdefault(print_, sub.name)
        out.append(_judge(graded, sub, report, print_ == right, zero))
    return out


def _derived(graded: Assignment, scratch: Path) -> list[_Submission]:
    solution = graded.solution
    assert solution is not None
    sizes = {k: v for k, v in graded.published.items() if isinstance(v, int) and not isinstance(v, bool)}
    answer_cells = {ex.cell for ex in graded.rubric.exercises}
    out = []
    folder = scratch / "mistakes"
    for index, cell in enumerate(solution.cells):
        gid = notebook.grade_id(cell)
        if cell.cell_type != "code" or gid not in answer_cells:
            continue
        # (the variables of this cell's exercises: a name another exercise grades is a temporary here)
        variables = {v.name for ex in graded.rubric.exercises if ex.cell == gid for v in ex.graded}
        for number, m in enumerate(derived.derive(gid, cell.source, variables, sizes)):
            nb = nbformat.reads(nbformat.writes(solution), 4)
            nb.cells[index].source = m.source
            nb.metadata.setdefault("grader", {})["assignment"] = graded.name
            path = folder / f"{gid}-{number:03d}" / graded.rubric.released.name
            path.parent.mkdir(parents=True)
            nbformat.write(nb, path)
            out.append(_Submission(m.describe(), m.kind, m.variable, "", path))
    return out


def _written(graded: Assignment) -> list[_Submission]:
    folder = graded.location.mistakes
    if folder is None or not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.ipynb")):
        meta = notebook.read(path).metadata.get("grader", {})
        said = meta.get("mistake", {}) if isinstance(meta, dict) else {}
        if isinstance(said, str):
            said = {"variable": said}
        if not isinstance(said, dict) or not isinstance(said.get("variable"), str):
            out.append(_Submission(path.name, "written", None, "", path))
            continue
        if said["variable"] not in {v.name for ex in graded.rubric.exercises for v in ex.graded}:
            raise_later = f"names {said['variable']!r} in metadata.grader.mistake, which is not a graded variable"
            out.append(_Submission(path.name, "written", said["variable"], "", path, raise_later))
            continue
        out.append(_Submission(path.name, "written", said["variable"], str(said.get("hint", "")), path))
    return out


def _fingerprint(run: GradedRun) -> str:
    """A digest of every value a run brought back: equal for two mistakes that give the same values."""
    import torch  # (not before the pool's workers start, as in grader.grade: loaded by now)

    digest = hashlib.sha256()
    for key in sorted(run.captured.values, key=str):
        value = run.captured.values[key]
        digest.update(repr(key).encode())
        if isinstance(value, torch.Tensor):
            digest.update(str((value.dtype, tuple(value.shape))).encode())
            # (+ 0 turns -0.0 into 0.0: equal numbers, equal bytes)
            plain = value.detach() + 0 if value.is_floating_point() else value.detach()
            digest.update(plain.contiguous().cpu().numpy().tobytes())
        else:
            digest.update(repr(type(value)).encode())
    return digest.hexdigest()


def _judge(graded: Assignment, sub: _Submission, report: Report, same_values: bool, zero: set[str]) -> MistakeResult:
    """The verdict on one graded mistake, read from the report's fields."""
    training = {
        ex.function.training.result.name for ex in graded.rubric.exercises if ex.function and ex.function.training
    }
    lost = tuple(v.name for v in report.variables if v.points < v.max_points)
    # the loss of a training run moves with any mistake of the function it trains: downstream by design
    own = tuple(n for n in lost if n not in training) or lost
    expected = sub.expected
    focus = next((v for v in report.variables if v.name == expected and v.points < v.max_points), None)
    focus = focus or next((v for v in report.variables if v.points < v.max_points), None)
    hint = focus.hint if focus else ""
    if sub.problem:
        return MistakeResult(sub.name, sub.kind, expected, lost, hint, "bad metadata", sub.problem)
    if not lost:
        why = "its values are the solution's (a symmetric tensor, a size-1 axis, a factor of 1?)" if same_values else ""
        if not why and expected in zero:
            why = f"{expected} is zero up to rounding (autograd's entries are within its atol): no mistake shows on it"
        if not why and sub.kind != "written":
            # the values moved, but within every tolerance: what the line changes is near zero here
            why = "it moves the values by less than the tolerance: the part it changes is near zero in these runs"
        if sub.kind == "written":
            why = why or "the author says it must cost " + (expected or "a variable")
        return MistakeResult(sub.name, sub.kind, expected, (), "", "not caught", why)
    if expected is not None and expected not in lost:
        return MistakeResult(sub.name, sub.kind, expected, lost, hint, "wrong variable", f"it cost {', '.join(lost)}")
    raised = [v.name for v in report.variables if v.name in own and v.status in ("missing", "error")]
    if expected is not None and len(own) > 1:
        others = [n for n in own if n != expected]
        if expected in raised or (raised and set(others) <= set(raised)):
            # the changed line raises: the lines after it never ran (a shape error is caught as it should be)
            return MistakeResult(sub.name, sub.kind, expected, lost, hint, "caught", "the changed line raises")
        own_status = next((v.status for v in report.variables if v.name == expected), "")
        why = f"also {', '.join(others)}"
        if own_status in ("shape", "dtype"):
            why += f": its {own_status} is wrong, so the steps below it cannot be judged on their own"
        return MistakeResult(sub.name, sub.kind, expected, lost, hint, "costs more", why)
    if not hint or (sub.word and sub.word.lower() not in (focus.message if focus else "").lower()):
        why = f"its hint does not say {sub.word!r}" if hint and sub.word else "no hint names the mistake"
        return MistakeResult(sub.name, sub.kind, expected, lost, hint, "no hint", why)
    return MistakeResult(sub.name, sub.kind, expected, lost, hint, "caught")
