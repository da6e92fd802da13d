"""The library entry point: grade one notebook, stage by stage (the numbers of ARCHITECTURE.md).

0 the assignment (loaded here when given by name) -> 1 load the notebook -> 2 plan its runs -> 3 run them in
child processes, while 4 the reference is computed here -> 5, 6 compare and score -> a `Report` (7 is the
caller's: text, JSON, a page).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from pathlib import Path

import nbformat

from grader import assets, lecture, notebook, sandbox
from grader import assignment as assignments
from grader import embedded as embedded_copy
from grader import plan as planning
from grader import rubric as rubrics
from grader.assignment import LECTURE, Assignment
from grader.errors import GraderError, RubricError, UnknownAssignment, UsageError
from grader.plan import Plan, PlannedCell
from grader.runs import Captured, Key
from grader.verdicts import GradedRun, Report

# torch, and the modules that import it (reference, score, the lecture's grading), are imported inside the
# functions that need them: `grader check` starts its worker process first, and the worker's `import torch`
# (a second or more) then overlaps the grader's own instead of following it.


def graded_rubric(
    path: str | Path, assignment: str | Assignment | None = None, course: Path | None = None, embedded: bool = False
) -> rubrics.Rubric:
    """The rubric `grade_with_runs` grades the notebook at `path` by, without running it (for the names of its
    variables). Raises as `grade_with_runs` does for input that cannot be graded."""
    student = notebook.read(Path(path))
    if _as_lecture(student, assignment):
        lectures = assignments.rubric_of(LECTURE)  # (the names only: no need to read the lecture's notebook)
        return lecture.rubric_for(lecture.recognise(student, path, lectures), lectures)
    return for_notebook(student, Path(path), assignment, course, embedded).rubric


def for_notebook(
    student: nbformat.NotebookNode,
    path: Path,
    assignment: str | Assignment | None,
    course: Path | None = None,
    embedded: bool = False,
) -> Assignment:
    """The assignment to grade `student` by: the one given, else the one its metadata names (in `course`, then
    among the shipped ones), else, where `embedded` allows it (`grader check`, `pytest --grade`: never the
    instructor's grading), the copy the notebook carries (`grader.embedded`)."""
    if isinstance(assignment, Assignment):
        return assignment
    if assignment is not None:
        return assignments.load(assignment, course)
    try:
        return assignments.load(assignments.name_of(student, path, course), course)
    except UnknownAssignment:
        if not embedded or embedded_copy.carried(student) is None:
            raise
    return embedded_copy.load(student, path)


def _as_lecture(student: nbformat.NotebookNode, assignment: str | Assignment | None) -> bool:
    """Whether to grade `student` as the lecture's own notebook: asked for, or it is not one of ours."""
    name = assignment.name if isinstance(assignment, Assignment) else assignment
    return name == LECTURE or (name is None and not lecture.is_ours(student))


def hidden_folders(assignment: Assignment) -> list[Path]:
    """Folders no run may read: the rubric and released notebook's, the solutions', and a checkout's
    tests and git history."""
    repository = assets.solutions_dir().parent  # a source checkout: its tests and history hold solutions too
    # (the copy a student's notebook carries has no folder of its own: the notebook's is the student's, and a
    # run sees it as it would under the instructor's grading)
    own = [] if assignment.location.origin == "embedded" else [assignment.rubric.released.parent]
    return [
        *own,
        assets.solutions_dir(),
        repository / "tests",
        repository / ".git",
        *assignment.location.hidden,
    ]


def cell_timeout(rubric: rubrics.Rubric, timeout: float | None) -> float:
    """Seconds a cell may run before it is interrupted: the rubric's, and at most half of the run's time,
    so that the cells after an endless one still have time to run."""
    return min(rubric.cell_timeout, (timeout or rubric.timeout) / 2)


def _worker(
    pool: sandbox.Pool, assignment: Assignment, params: dict[str, object], data_files: dict[str, Path]
) -> sandbox.Worker:
    """The warm worker for `params`' setup parameters: the release's cells up to the last setup cell run."""
    rubric = assignment.rubric
    key = (assignment.digest, tuple(repr(params.get(k)) for k in rubric.setup_parameters))

    def make() -> tuple[tuple[PlannedCell, ...], list[str], dict[str, Path]]:
        cells = planning.plan(assignment.released, assignment, params).cells
        setup = _through_setup(cells, rubric)
        return setup, [c.source for c in cells[len(setup) :]], data_files

    return pool.worker(key, make)


def setup_cells(assignment: Assignment, params: dict[str, object]) -> tuple[PlannedCell, ...]:
    """The released notebook's cells up to its last setup cell, planned with `params`: what a worker runs once."""
    return _through_setup(planning.plan(assignment.released, assignment, params).cells, assignment.rubric)


def _through_setup(cells: tuple[PlannedCell, ...], rubric: rubrics.Rubric) -> tuple[PlannedCell, ...]:
    last = max((i for i, c in enumerate(cells) if c.grade_id in rubric.setup_cells), default=-1)
    return cells[: last + 1]


def start_workers(
    pool: sandbox.Pool, assignment: Assignment, hidden_runs: tuple[dict[str, object], ...] | None = None
) -> None:
    """Start (if need be) the workers every run of a notebook of `assignment` will use: their `import torch` and
    setup then overlap whatever the caller does next (a batch's own torch import, its feedback graph)."""
    if assignment.name == LECTURE:
        return  # (a lecture notebook's worker depends on the notebook: it starts with its grading)
    _warm(pool, assignment, _Runs.of(assignment, None, hidden_runs).settings)


def _warm(pool: sandbox.Pool, assignment: Assignment, settings: list[dict[str, object]]) -> None:
    """Start the workers of runs with these `settings` (parameters), each with the assignment's folders hidden."""
    pool.hide(hidden_folders(assignment))
    for p in settings:
        _worker(pool, assignment, p | assignment.rubric.data, _copies(assignment))


def grade_notebook(
    path: str | Path,
    *,
    assignment: str | Assignment | None = None,
    timeout: float | None = None,
    parameters: dict[str, object] | None = None,
    hidden_runs: tuple[dict[str, object], ...] | None = None,
    pool: sandbox.Pool | None = None,
    data: str | Path | None = None,
    course: Path | None = None,
    embedded: bool = False,
) -> Report:
    """Grade the notebook at `path` and return its `Report` (the parameters: see `grade_with_runs`)."""
    return grade_with_runs(
        path,
        assignment=assignment,
        timeout=timeout,
        parameters=parameters,
        hidden_runs=hidden_runs,
        pool=pool,
        data=data,
        course=course,
        embedded=embedded,
    )[0]


def grade_with_runs(
    path: str | Path,
    *,
    assignment: str | Assignment | None = None,
    timeout: float | None = None,
    parameters: dict[str, object] | None = None,
    hidden_runs: tuple[dict[str, object], ...] | None = None,
    pool: sandbox.Pool | None = None,
    data: str | Path | None = None,
    course: Path | None = None,
    embedded: bool = False,
) -> tuple[Report, list]:
    """Grade the notebook at `path`: its `Report`, and each run with its values and references (for pictures).

    Parameters
    ----------
    path: the student's notebook.
    assignment: which assignment it is (its name, or the `Assignment` a caller loaded); by default the one its
        metadata names.
    timeout: wall-clock limit in seconds for running it (each run); by default the rubric's.
    parameters: values for the `parameters` cell (e.g. `{"seed": 7}`); the rest keep their defaults.
    hidden_runs: parameter overrides of the hidden re-runs; by default the rubric's, `()` for none.
    pool: warm workers to run it in, shared between calls (a batch); by default a pool of its own.
    data: the data set a lecture notebook reads as `names.txt` (default: the grader's); lecture notebooks only.
    course: the instructor's course folder, where an assignment's name is looked up first (`grader.course`).
    embedded: whether, when its assignment is found nowhere, the copy the notebook carries may grade it
        (`grader check` and `pytest --grade` only; the report says so in a note).

    A notebook whose metadata names no assignment is graded as the lecture's own notebook if it looks
    like one (`grader.lecture`): its own forward pass, Exercises 1-3, no parameters or hidden re-runs.

    Raises `NotANotebook` or `UnknownAssignment` for input that cannot be graded at all; everything
    that goes wrong inside the notebook is reported in the `Report` instead.
    """
    path = Path(path)
    student = notebook.read(path)
    if _as_lecture(student, assignment):
        if parameters or hidden_runs:
            raise RubricError("lecture notebooks have no parameters cell and no hidden re-runs")
        return _grade_lecture(path, student, data=data, timeout=timeout, pool=pool)
    if data is not None:
        raise UsageError("--data is for lecture notebooks; an assignment reads the data set its rubric names")
    assignment = for_notebook(student, path, assignment, course, embedded)
    runs = _Runs.of(assignment, parameters, hidden_runs)
    plans, captured, refs = _in_pool(pool, assignment, runs, student, timeout)
    graded = _graded(assignment, runs, plans, captured, refs)
    return _scored(path, assignment, graded), graded


def _in_pool(
    pool: sandbox.Pool | None,
    assignment: Assignment,
    runs: _Runs,
    student: nbformat.NotebookNode,
    timeout: float | None,
) -> tuple[list[Plan], list[Captured], list[dict[Key, object]]]:
    """Every run of the `student`'s notebook in `pool` (by default a pool of its own, closed after), and the
    references meanwhile: each run's plan, what each run brought back, and the references of each run's
    parameters."""
    own_pool = pool is None
    pool = pool or sandbox.Pool()
    try:
        # The workers first: their `import torch` and setup overlap the planning and this process's own import.
        _warm(pool, assignment, runs.settings)
        # The run reads its own copy of each data file, under the file's name in its working directory.
        plans = [planning.plan(student, assignment, p | assignment.rubric.data) for p in runs.settings]
        jobs = _jobs(pool, assignment, runs, plans, timeout)
        # Everything this process will need is imported before the notebook's first cell may run.
        import safetensors.torch  # noqa: F401 -- imported for its side effect: loaded before student code runs

        from grader import reference, score  # noqa: F401 -- the same (they import torch: not before the workers)

        return plans, *_run(jobs, pool, assignment, runs, plans, timeout)
    finally:
        if own_pool:
            pool.close()


def _graded(
    assignment: Assignment,
    runs: _Runs,
    plans: list[Plan],
    captured: list[Captured],
    refs: list[dict[Key, object]],
) -> list[GradedRun]:
    """Each run as score judges it, with the references that need the run's own values added to its own."""
    from grader import reference  # (torch: see the note at the top; loaded by now, in `_in_pool`)

    for p, plan, c, ref in zip(runs.with_data, plans, captured, refs):
        ref.update(reference.replayed_calls(assignment, p, c))
        ref.update(reference.step_references(assignment, p, c, ref))
        ref.update(reference.operand_hints(assignment, p, plan, c, ref))
    return [
        GradedRun(label, tuple(k for k in p if p[k] != runs.main[k]), plan, c, ref, _sizes(p))
        for label, p, plan, c, ref in zip(runs.labels, runs.settings, plans, captured, refs)
    ]


def _scored(path: Path, assignment: Assignment, graded: list[GradedRun]) -> Report:
    """The notebook's `Report`, with a note where the copy it carries graded it."""
    from grader.score import score  # (torch: see the note at the top; loaded by now, in `_in_pool`)

    report = score(assignment.rubric, str(path), graded, dict(assignment.published))
    if assignment.location.origin == "embedded":
        report = dataclasses.replace(report, notes=(*report.notes, embedded_copy.NOTE.format(name=assignment.name)))
    return report


@dataclass(frozen=True)
class _Runs:
    """The runs of one notebook: its own parameters, then each hidden run's, checked against the release."""

    main: dict[str, object]
    """The notebook's own run's parameters (the published ones, the rubric's grading ones, the caller's)."""
    settings: list[dict[str, object]]
    """Each run's parameters, the notebook's own first."""
    labels: list[str]
    """How the report names each run."""
    wheres: list[str]
    """How an error names where each run's parameters came from (`hidden run 2`)."""
    overrides: list[dict[str, object]]
    """What each run changes."""
    with_data: list[dict[str, object]]
    """Each run's parameters with the data files' paths, as the grader's references read them."""

    @staticmethod
    def of(
        assignment: Assignment,
        parameters: dict[str, object] | None,
        hidden_runs: tuple[dict[str, object], ...] | None,
    ) -> _Runs:
        rubric, published = assignment.rubric, dict(assignment.published)
        hidden = rubric.hidden_runs if hidden_runs is None else tuple(hidden_runs)
        overrides = [parameters or {}, *hidden]
        wheres = ["parameters"] + [f"hidden run {i}" for i in range(1, len(hidden) + 1)]
        for where, changed in zip(wheres, overrides):
            _check_parameters(rubric, published, changed, where)
        main = published | (rubric.grading_parameters or {}) | (parameters or {})
        settings = [main] + [main | h for h in hidden]
        labels = ["the notebook's parameters"] + [f"hidden run {i}" for i in range(1, len(settings))]
        with_data = [p | {k: str(f) for k, f in assignment.data.items()} for p in settings]
        return _Runs(main, settings, labels, wheres, overrides, with_data)


def _jobs(
    pool: sandbox.Pool, assignment: Assignment, runs: _Runs, plans: list[Plan], timeout: float | None
) -> list[tuple[sandbox.Job, list[int]]]:
    """The runs' jobs, not yet released, with the runs each holds: one job per worker (per data set), whose runs
    go one after another in one process. Starts the workers that are not running yet."""
    rubric = assignment.rubric
    groups: dict[int, tuple[sandbox.Worker, list[int]]] = {}
    for i, p in enumerate(runs.settings):
        worker = _worker(pool, assignment, p | rubric.data, _copies(assignment))
        groups.setdefault(id(worker), (worker, []))[1].append(i)
    return [
        (_start(w, [plans[i] for i in group], [runs.labels[i] for i in group], rubric, timeout), group)
        for w, group in groups.values()
    ]


def _copies(assignment: Assignment) -> dict[str, Path]:
    """The data files a run reads, by the name it reads them under."""
    return {assignment.rubric.data[k]: p for k, p in assignment.data.items()}


def _run(
    jobs: list[tuple[sandbox.Job, list[int]]],
    pool: sandbox.Pool,
    assignment: Assignment,
    runs: _Runs,
    plans: list[Plan],
    timeout: float | None,
) -> tuple[list[Captured], list[dict[Key, object]]]:
    """Every run of the notebook, and the grader's references meanwhile: what each run brought back, and the
    references of each run's parameters. Each job is released as soon as its worker is ready, by a thread of
    its own, while this one computes the references: a run no longer waits for them (`grader check` waited
    about half a second), and everything this process needs is imported before (`_in_pool`)."""
    captured: list[Captured | None] = [None] * len(runs.settings)
    going = [_Going(job) for job, _ in jobs]
    # (where this raises, or is interrupted, the runs are left to their threads: they end with their worker
    # or their timeout, and the command line removes their cgroups on its way out)
    refs = [
        _reference(assignment, p, where, changed)
        for p, where, changed in zip(runs.with_data, runs.wheres, runs.overrides)
    ]
    for (_, group), job in zip(jobs, going):
        for i, c in zip(group, job.result()):
            captured[i] = c
    done = [c for c in captured if c is not None]
    assert len(done) == len(captured)  # (every job's wait() returns one per run)
    return _again_where_not_started(pool, assignment, runs, plans, done, timeout), refs


class _Going:
    """A job released and waited for by a thread of its own; `result()` joins it (and raises what it raised)."""

    def __init__(self, job: sandbox.Job) -> None:
        self.job = job
        self.captured: list[Captured] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._go, name="grader job", daemon=True)
        self.thread.start()

    def _go(self) -> None:
        try:
            try:
                self.job.release()
            finally:  # released or not, wait() says what each run reached and closes the job's files
                self.captured = self.job.wait()
        except BaseException as e:  # handed to the caller's thread by result()
            self.error = e

    def result(self) -> list[Captured]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.captured


def _again_where_not_started(
    pool: sandbox.Pool,
    assignment: Assignment,
    runs: _Runs,
    plans: list[Plan],
    captured: list[Captured],
    timeout: float | None,
) -> list[Captured]:
    """A run that never began because an earlier one ended their process (it hung past its time, exited, was
    killed) begins again in a process of its own: each run is judged on what it reached."""
    rubric, copies = assignment.rubric, _copies(assignment)
    while not all(c.started for c in captured):
        again = [i for i, c in enumerate(captured) if not c.started]
        worker = _worker(pool, assignment, runs.settings[again[0]] | rubric.data, copies)
        same = [i for i in again if _worker(pool, assignment, runs.settings[i] | rubric.data, copies) is worker]
        job = _start(worker, [plans[i] for i in same], [runs.labels[i] for i in same], rubric, timeout)
        job.release()
        for i, c in zip(same, job.wait()):
            captured[i] = c
        if not captured[same[0]].started:  # the worker itself is gone: say so rather than try forever
            break
    return captured


def _start(
    worker: sandbox.Worker, plans: list[Plan], labels: list[str], rubric: rubrics.Rubric, timeout: float | None
) -> sandbox.Job:
    """A job of `plans` on `worker`, not yet released, with the run's and each cell's time limits."""
    return worker.start(plans, labels, timeout or rubric.timeout, cell_timeout(rubric, timeout))


def _sizes(params: dict[str, object]) -> dict[str, int]:
    """The whole-number parameters of a run (sizes, for hints), not true/false ones."""
    return {k: v for k, v in params.items() if type(v) is int}


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _check_parameters(
    rubric: rubrics.Rubric, published: dict[str, object], overrides: dict[str, object], where: str
) -> None:
    """Raise `RubricError` naming the field unless `overrides` set parameters the release has, to values of the
    published ones' kinds (a whole number for a whole number, any number for a number)."""
    unknown = set(overrides) - set(published)
    if unknown:
        raise RubricError(
            f"{where}: {rubric.assignment} has no parameters {sorted(unknown)} (it has {sorted(published)})"
        )
    for key, value in overrides.items():
        if key in rubric.data:
            raise RubricError(f"{where}: {key} is the grader's to set (to its own copy of {rubric.data[key]})")
        default = published[key]
        if default is None or type(value) is type(default) or (type(default) is float and type(value) is int):
            continue
        kind = _KINDS.get(type(value), type(value).__name__)
        raise RubricError(
            f"{where}: {key} = {value!r} is {kind}, but {rubric.assignment}'s {key} is "
            f"{_KINDS.get(type(default), type(default).__name__)} (published: {default!r})"
        )


def _reference(
    assignment: Assignment, params: dict[str, object], where: str, overrides: dict[str, object]
) -> dict[Key, object]:
    """The reference of one run. The released cells run with the published values; where they fail with values a
    caller set (a batch size of 0, a negative width), a `RubricError` that names them."""
    from grader import reference  # (torch: see the note at the top; loaded by `_in_pool` once the workers start)

    if not overrides:
        return reference.gradients(assignment, params)  # (a failure here is the grader's own bug)
    try:
        return reference.gradients(assignment, params)
    except Exception as e:  # the released cells are trusted code; what they cannot run with is the caller's mistake
        values = ", ".join(f"{k} = {v!r}" for k, v in overrides.items())
        why = " ".join(str(e).split())[:200]
        raise RubricError(
            f"{where} ({values}): {assignment.name}'s reference cells fail with these values "
            f"({type(e).__name__}: {why})"
        ) from None


def _grade_lecture(
    path: Path,
    student: nbformat.NotebookNode,
    *,
    data: str | Path | None,
    timeout: float | None,
    pool: sandbox.Pool | None,
) -> tuple[Report, list[GradedRun]]:
    """A lecture notebook: recognise it, run it up to Exercise 3, and grade it against the lecture's
    forward pass run here on the parameters and minibatch its run produced."""
    from grader.lecture import grading as lecture_grading  # (torch: see the note at the top)

    lectures = assignments.lecture()
    recognised = lecture.recognise(student, path, lectures.rubric)
    assignment = lectures.with_rubric(lecture.rubric_for(recognised, lectures.rubric))
    rubric = assignment.rubric
    plan = lecture.plan(student, recognised, rubric)
    data_path = Path(data) if data is not None else assets.data_dir() / "names.txt"
    if not data_path.is_file():
        raise GraderError(f"--data {data_path}: no such file")
    own_pool = pool is None
    pool = pool or sandbox.Pool()
    pool.hide(hidden_folders(assignment))
    worker = pool.worker(
        (LECTURE, str(data_path.resolve())),
        lambda: ((), [lecture.warm_up_source(lectures)], {f: data_path for f in lecture.DATA_FILES}),
    )
    own_run = None
    try:
        job = worker.start([plan], ["the notebook as it is"], timeout or rubric.timeout, cell_timeout(rubric, timeout))
        job.release()
        captured = job.wait()[0]
        if lecture_grading.differing(assignment, recognised, plan, captured):
            # a forward pass of its own: the reference is autograd through it, in a run of its own (autograd on)
            own = lecture.own_forward(plan, recognised, rubric.loss)
            job = worker.start(
                [own], ["your own forward pass"], timeout or rubric.timeout, cell_timeout(rubric, timeout)
            )
            job.release()
            own_run = job.wait()[0]
    finally:
        if own_pool:
            pool.close()

    return lecture_grading.graded(str(path), student, recognised, assignment, plan, captured, own_run)


def feedback_edges(assignment: Assignment) -> dict[str, tuple[str, ...]]:
    """The graded forward tensors and those each is computed from, with the published parameters."""
    from grader import reference  # (torch: see the note at the top)

    if assignment.name == LECTURE:
        return reference.forward_edges(assignment, {"leaves": lecture.leaves(lecture.example_leaves())})
    return reference.forward_edges(assignment, assignment.defaults())
