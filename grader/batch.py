"""Grade a whole class: find the submissions, grade them in parallel, keep every grade.

find submissions (files, folders, nbgrader's layout, LMS zips) -> grade each one (skipping those
whose content already has a report) -> write its report atomically the moment it is ready ->
rebuild grades.csv, the feedback files and the class summary from the reports on disk.

The reports on disk are the gradebook: a batch killed at any moment and started again grades only
what has no report yet, and ends with the same files as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from grader import assets, notebook, rubric as rubrics, sandbox
from grader.reports import text as reports
from grader.errors import GraderError, NotANotebook
from grader.rubric import Rubric
from grader.sandbox import common

# torch, and the modules that import it (grade's stages, compare, score, feedback, class_report), are imported
# where they are used: the pool's worker starts first, and its `import torch` overlaps the grader's own.

MAX_ZIP_BYTES = 2 * 2**30
"""Largest total size of the files extracted from one zip."""


@dataclass(frozen=True)
class Submission:
    """One student's notebook, as found."""

    student: str
    """The student's id: the nbgrader folder name, an LMS download's name field, or the file stem."""
    path: Path
    """The notebook file (extracted from a zip into the batch's scratch folder where need be)."""
    digest: str
    """sha256 of the file's bytes: a report is reused only for the very same submission."""
    canvas_id: str = ""
    """The Canvas user id in the file name of a Canvas bulk download (`name_[LATE_]userid_subid_file`), or empty."""
    late: bool = False
    """Whether Canvas marked the submission late (`LATE_` in its file name)."""


@dataclass(frozen=True)
class Found:
    """What `discover` found."""

    submissions: tuple[Submission, ...]
    """One per student, sorted by student id."""
    problems: tuple[str, ...]
    """Duplicates and inputs that hold no notebook, one sentence each."""
    roots: tuple[Path, ...] = ()
    """The folders the submissions were found in (a zip's: where it was unpacked); hidden from every run."""


@dataclass(frozen=True)
class Outcome:
    """One submission's grade, as written to the reports folder."""

    submission: Submission
    """Which one."""
    report: dict
    """The `grader check --json` object, plus `student` and `sha256`."""
    reused: bool
    """True when an earlier run's report for the same content was kept."""
    why: str = ""
    """Why it was graded again, when an earlier report existed ("rubric changed"); empty otherwise."""


# --- finding submissions ----------------------------------------------------------------------------

# Canvas: name_[LATE_]userid_subid_file
_LMS = re.compile(r"^(?P<student>[A-Za-z0-9-]+)_(?P<late>LATE_)?(?P<user>\d+)_\d+_")


def _student_of(path: Path, root: Path, assignment: str) -> str:
    relative = path.relative_to(root)
    if len(relative.parts) >= 3 and relative.parts[-2] == assignment:  # nbgrader: <student>/<assignment>/x.ipynb
        return relative.parts[-3]
    m = _LMS.match(path.name)
    return m["student"] if m else path.stem


def _canvas_of(path: Path, root: Path, assignment: str) -> tuple[str, bool]:
    """The Canvas user id and late flag in the name of a file of a Canvas bulk download, or ("", False)."""
    relative = path.relative_to(root)
    if len(relative.parts) >= 3 and relative.parts[-2] == assignment:  # nbgrader's layout: no Canvas name
        return "", False
    m = _LMS.match(path.name)
    return (m["user"], bool(m["late"])) if m else ("", False)


_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(\.|$)", re.IGNORECASE)  # devices, not files, on Windows


def _safe_id(student: str) -> str:
    """The id as a file name on every platform: letters, digits and `._@-` only, never starting with a dot
    or ending with one, never a name Windows keeps for a device (`con`, `nul.x`, `com1`)."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", student).strip(".") or "_"
    return f"_{safe}" if _RESERVED.match(safe) else safe


def _extract(archive: Path, scratch: Path) -> Path:
    """Unpack the notebooks of a zip into `scratch` (nothing outside it, nothing over the size cap)."""
    dest = Path(tempfile.mkdtemp(prefix=_safe_id(archive.stem) + "-", dir=scratch))
    total = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if info.is_dir() or name.suffix != ".ipynb" or name.is_absolute() or ".." in name.parts \
                    or "__MACOSX" in name.parts or ".ipynb_checkpoints" in name.parts:
                continue
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                raise GraderError(f"{archive}: more than {MAX_ZIP_BYTES} bytes of notebooks")
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                out.write(src.read(MAX_ZIP_BYTES + 1))
    return dest


def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and p.is_file())


def discover(inputs: Iterable[Path], assignment: str, scratch: Path) -> Found:
    """Find one notebook per student in `inputs` (files, folders, zips); zips are unpacked into `scratch`."""
    candidates: list[tuple[str, Path, Path]] = []
    problems: list[str] = []
    roots: list[Path] = []
    for given in inputs:
        given = Path(given)
        if given.is_file() and zipfile.is_zipfile(given):
            try:
                root = _extract(given, scratch)
            except (zipfile.BadZipFile, OSError) as e:
                problems.append(f"{given}: cannot unpack ({e})")
                continue
            found = _notebooks(root)
        elif given.is_dir():
            root, found = given, _notebooks(given)
        elif given.exists():
            root, found = given.parent, [given]
        else:
            problems.append(f"{given}: no such file or folder")
            continue
        roots.append(root)
        if not found:
            problems.append(f"{given}: no notebook (.ipynb) in it")
        candidates += [(_student_of(p, root, assignment), p, root) for p in found]
    by_student: dict[str, list[tuple[Path, Path]]] = {}
    for student, path, root in candidates:
        by_student.setdefault(_safe_id(student), []).append((path, root))
    for student, paths in list(by_student.items()):
        # Canvas names are "lastfirst": two students of the same name are told apart by their user ids
        users = {_canvas_of(p, root, assignment)[0] for p, root in paths}
        if len(users) > 1 and "" not in users:
            del by_student[student]
            for p, root in paths:
                by_student.setdefault(f"{student}_{_canvas_of(p, root, assignment)[0]}", []).append((p, root))
    submissions = []
    for student, paths in sorted(by_student.items()):
        if len(paths) > 1:
            problems.append(f"{student}: {len(paths)} notebooks ({', '.join(str(p) for p, _ in paths)}); "
                            f"graded {paths[0][0]}")
        path, root = paths[0]
        canvas_id, late = _canvas_of(path, root, assignment)
        submissions.append(Submission(student, path, hashlib.sha256(path.read_bytes()).hexdigest(), canvas_id, late))
    return Found(tuple(submissions), tuple(problems), tuple(dict.fromkeys(roots)))


# --- grading and writing ------------------------------------------------------------------------------

def _write_atomically(path: Path, content: str | bytes) -> None:
    """Replace `path` with `content` in one step: a reader (or a killed batch) sees the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def failed_report(rubric: Rubric, notebook: str, reason: str) -> dict:
    """The report (as JSON) of a submission that could not be graded at all: 0 for every variable, and why."""
    from grader.score import ungradable

    return reports.to_dict(ungradable(rubric, notebook, reason))


def _read_report(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _existing(path: Path, digest: str) -> dict | None:
    found = _read_report(path)
    return found if found is not None and found.get("sha256") == digest else None


# --- what grades a submission: a report is reused only while all of it is unchanged ---------------------

_CHANGED = {"submission": "submission", "rubric": "rubric", "released": "released notebook",
            "solution": "solution", "hidden_runs": "hidden runs", "data": "data", "timeout": "time limit",
            "memory": "memory limit", "grader": "grader", "torch": "PyTorch"}
"""Each input of a grade, as the progress line names it when it changed."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(value: object) -> bytes:
    """The same bytes for the same values, whatever the order of keys or the comments of the file they came from."""
    return json.dumps(value, sort_keys=True, default=repr).encode("utf-8")


@functools.lru_cache(maxsize=1)
def _grader_version() -> str:
    """The package's version and a digest of its code and templates (the feedback page is written with the
    report): an install from a git checkout keeps its version number from commit to commit, and a grade must
    follow the code that made it."""
    try:
        version = metadata.version("backprop-grader")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"{version}+{code_digest(Path(__file__).resolve().parent)}"


def code_digest(package: Path) -> str:
    """A short digest of the `*.py` files of `package` and of everything in its `templates/` folders."""
    files = {p for p in package.rglob("*") if p.is_file() and (p.suffix == ".py" or "templates" in p.relative_to(package).parts)}
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _torch_version() -> str:
    """PyTorch's version, from its package metadata: importing torch here would delay the pool's start."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def grading_inputs(rubric: Rubric, hidden_runs: tuple[dict[str, object], ...] | None = None,
                   timeout: float | None = None, limits: sandbox.Limits = sandbox.DEFAULT_LIMITS) -> dict[str, str]:
    """A digest of everything besides the submission that its grade depends on, one per input: the rubric (its
    values, not its comments), the released notebook, the solution where the rubric reads it, the hidden runs
    (`hidden_runs`, or the rubric's), the data files, the time limit (`timeout`, or the rubric's) and the memory
    cap (`limits.memory`) a run had, since a run that ran out of either may pass with more, the grader's
    version, and PyTorch's (another release can compute the references a few ulps apart)."""
    toml = rubric.released.with_name(f"{rubric.assignment}.toml")
    uses_solution = any(ex.kind == "values" and ex.source == "solution" for ex in rubric.exercises)
    data = hashlib.sha256()
    for key, name in sorted(rubric.data.items()):
        data.update(f"{key}={name}\0".encode() + (assets.data_dir() / name).read_bytes())
    return {
        "rubric": _sha256(_canonical(tomllib.loads(toml.read_text(encoding="utf-8")))),
        "released": _sha256(rubric.released.read_bytes()),
        "solution": _sha256(rubric.solution.read_bytes()) if uses_solution and rubric.solution.is_file() else "",
        "hidden_runs": _sha256(_canonical(list(rubric.hidden_runs if hidden_runs is None else hidden_runs))),
        "data": data.hexdigest(),
        "timeout": f"{timeout or rubric.timeout:g}",  # seconds, as `grade_with_runs` reads it
        "memory": f"{limits.memory / 2**20:g}",  # MB
        "grader": _grader_version(),
        "torch": _torch_version(),
    }


def regrade_reason(report: dict | None, submission: Submission, inputs: dict[str, str]) -> str | None:
    """Why `submission` must be graded again despite the earlier `report` ("rubric changed"); None to keep the
    report, "" when there is none to keep."""
    if report is None:
        return ""
    if report.get("sha256") != submission.digest:
        return "submission changed"
    kept = report.get("inputs")
    if not isinstance(kept, dict):
        return "its report does not say what graded it"
    changed = [_CHANGED[k] for k in inputs if kept.get(k) != inputs[k]]
    if not changed:
        return None
    return f"{', '.join(changed[:-1])} and {changed[-1]} changed" if len(changed) > 1 else f"{changed[0]} changed"


def _digest(value: object) -> str:
    """A short digest of a tensor's dtype, shape and bytes: equal only for identical answers."""
    import torch

    if type(value) is not torch.Tensor:
        return ""
    t = value.detach().cpu().contiguous()
    header = f"{t.dtype}{tuple(t.shape)}".encode()
    return _sha256(header + t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else header)[:16]


def answer_digests(rubric: Rubric, graded, main) -> dict[str, str]:
    """`exercise/name` -> a digest of the answer the notebook's own run gave (`main`), for every variable of the
    `graded` report that is wrong in that run: what the class report compares between students (identical wrong
    values)."""
    from grader.compare import PASSING

    exercises = {ex.id: ex for ex in rubric.exercises}
    out = {}
    for v in graded.variables:
        ex = exercises.get(v.exercise)
        if ex is None or v.status in PASSING or (v.runs and v.runs[0] in PASSING):
            continue  # (right in the notebook's own run, wrong only in a hidden one: the value here is a right one)
        key = (ex.id, v.name)
        if ex.function is not None and v.name in {x.name for x in ex.variables} and ex.function.calls:
            key = (ex.id, f"{ex.function.calls[0]}/{v.name}")  # the first recorded call of the answer's function
        digest = _digest(main.captured.values.get(key))
        if digest:
            out[f"{ex.id}/{v.name}"] = digest
    return out


def grade_one(submission: Submission, rubric: Rubric, timeout: float | None, pool: sandbox.Pool | None = None,
              edges: dict[str, tuple[str, ...]] | None = None,
              hidden_runs: tuple[dict[str, object], ...] | None = None) -> tuple[dict, str | None]:
    """Grade one submission as `rubric`'s assignment: its report, and its HTML feedback page (None for a
    notebook that cannot be read, which gets a failed report). `edges`: `grade.feedback_edges(rubric)`;
    `hidden_runs`: the hidden re-runs' parameters (default: the rubric's)."""
    from grader.reports import feedback
    from grader.grade import feedback_edges, grade_with_runs

    try:
        graded, runs = grade_with_runs(submission.path, assignment=rubric.assignment, timeout=timeout, pool=pool,
                                       hidden_runs=hidden_runs)
    except NotANotebook as e:  # the student's file; anything else is the grader's problem and stops the batch
        return {"student": submission.student, "sha256": submission.digest,
                **failed_report(rubric, str(submission.path), str(e)), "answers": {}}, None
    page = feedback.page(graded, runs, feedback_edges(rubric) if edges is None else edges)
    answers = answer_digests(rubric, graded, runs[0]) if runs else {}
    return {"student": submission.student, "sha256": submission.digest, **reports.to_dict(graded),
            "answers": answers}, page


def _at_once(jobs: int, workers: sandbox.Pool) -> int:
    """How many submissions to grade at once: `jobs`, or fewer where their runs would not fit the memory of
    the container the grader runs in (said on stderr)."""
    if workers.most_at_once is None or jobs <= workers.most_at_once:
        return jobs
    print(f"grader: warning: grading {workers.most_at_once} at once, not {jobs}: more runs would not fit the "
          f"memory limit the grader runs under with {common.MIN_RUN_MEMORY // 2**20} MB each", file=sys.stderr)
    return workers.most_at_once


def grade_all(found: Found, assignment: str, out: Path, *, jobs: int = 1, timeout: float | None = None,
              force: bool = False, progress: Callable[[Outcome], None] | None = None,
              limits: sandbox.Limits = sandbox.DEFAULT_LIMITS, scheduler: str | None = None,
              backend: sandbox.Backend | None = None, hidden_runs: tuple[dict[str, object], ...] | None = None,
              pool: sandbox.Pool | None = None) -> list[Outcome]:
    """Grade every submission in `found` into `out/reports/`, `jobs` at a time, reusing a report only while
    the submission and everything else that graded it (`grading_inputs`) are unchanged.

    `limits` caps each run (memory, file size, processes, its /tmp). `scheduler`: grade on a Dask cluster
    instead (`tcp://HOST:PORT`, or `local:N` for N local Dask workers; see `grader.cluster`); `jobs` is
    then the cluster's business. `backend`: the sandbox to run them in (default: `sandbox.choose()`).
    `hidden_runs`: the hidden re-runs' parameters (default: the rubric's). `pool`: warm workers to grade in
    (default: a pool of the batch's own, which hides the batch's folders from every run; a pool given here
    hides them only from workers it starts from now on).
    """
    from grader.grade import feedback_edges, hidden_folders

    rubric = rubrics.load(assignment)
    inputs = grading_inputs(rubric, hidden_runs, timeout, limits)
    folder = out / "reports"
    for stale in folder.glob(".*.json.*"):  # a write that a killed batch left half done
        stale.unlink(missing_ok=True)
    outcomes: list[Outcome] = []
    todo: list[Submission] = []
    why: dict[str, str] = {}
    for s in found.submissions:
        earlier = _read_report(folder / f"{s.student}.json")
        reason = "--force" if force and earlier is not None else regrade_reason(earlier, s, inputs)
        if reason is None:
            outcomes.append(Outcome(s, earlier, reused=True))
            if progress:
                progress(outcomes[-1])
        else:
            todo.append(s)
            why[s.student] = reason
    if not todo:
        return sorted(outcomes, key=lambda o: o.submission.student)

    def record(s: Submission, report: dict, page: str | None) -> None:
        report = {**report, "inputs": inputs}
        if page is not None:  # before the report: a report on disk means its page is there too
            _write_atomically(out / "feedback" / f"{s.student}.html", page)
        _write_atomically(folder / f"{s.student}.json", json.dumps(report, indent=2))
        outcomes.append(Outcome(s, report, reused=False, why=why[s.student]))
        if progress:
            progress(outcomes[-1])

    # No run may read the solutions, the rubric, the other submissions or what this batch writes.
    hidden = [*hidden_folders(rubric), out.resolve(), *found.roots, *(s.path.resolve() for s in found.submissions)]
    if scheduler is not None:
        from grader.integrations import cluster

        # the folders only (every submission is in one of them): a task's size must not grow with the class
        folders = [*hidden_folders(rubric), out.resolve(), *found.roots]
        for s, report, page in cluster.grade(todo, rubric, scheduler, timeout=timeout, limits=limits,
                                             hidden=tuple(str(p) for p in folders),
                                             backend=backend.requested if backend else "auto",
                                             hidden_runs=hidden_runs):
            record(s, report, page)
        return sorted(outcomes, key=lambda o: o.submission.student)

    if pool is not None:
        pool.hide(hidden)
    with (sandbox.Pool(hidden, limits, backend, jobs=max(1, jobs)) if pool is None else contextlib.nullcontext(pool)) as workers, \
            ThreadPoolExecutor(max_workers=_at_once(max(1, jobs), workers)) as threads:
        edges = feedback_edges(rubric)
        futures = {threads.submit(grade_one, s, rubric, timeout, workers, edges, hidden_runs): s for s in todo}
        for future in as_completed(futures):
            record(futures[future], *future.result())
    return sorted(outcomes, key=lambda o: o.submission.student)


# --- what the instructor reads ------------------------------------------------------------------------

def _columns(rubric: Rubric) -> list[str]:
    return [f"{ex.id}:{v.name}" for ex in rubric.exercises for v in ex.graded]


def gradebook_csv(rubric: Rubric, report_files: Iterable[dict], late: Iterable[str] = ()) -> str:
    """grades.csv: a row per student, the total, the points per variable, the status, the error, and `yes` in
    the last column for the students in `late` (submissions Canvas marked late)."""
    columns = _columns(rubric)
    late = set(late)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["student", "status", "score", "max_score", *columns, "error", "late"])
    for r in sorted(report_files, key=lambda r: r["student"]):
        points = {f"{v['exercise']}:{v['name']}": v["points"] for v in r["variables"]}
        writer.writerow([r["student"], r["status"], f"{r['score']:g}", f"{r['max_score']:g}",
                         *(f"{points.get(c, 0.0):g}" for c in columns), r["error"],
                         "yes" if r["student"] in late else ""])
    return buffer.getvalue()


CANVAS_COLUMNS = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")
"""The student columns Canvas's gradebook import reads, in its order; the assignment's column follows."""


def canvas_csv(submissions: Iterable[Submission], report_files: Iterable[dict], column: str) -> str:
    """canvas.csv: the scores of the submissions that came from a Canvas bulk download, in the layout of
    Canvas's gradebook import (Grades > Import), one upload.

    Canvas finds each student by `ID`, its user id (the number in the download's file names), and the
    assignment by `column`: `Name (assignment id)` as Canvas's own export heads it, or a name alone (Canvas
    then looks the assignment up by name, and offers to create it if there is none). There is no `Points
    Possible` row: Canvas would take it as a change of the assignment's points, which are the instructor's.
    """
    by_student = {r["student"]: r for r in report_files}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CANVAS_COLUMNS, column])
    for s in sorted(submissions, key=lambda s: s.student):
        report = by_student.get(s.student)
        if s.canvas_id and report is not None:
            writer.writerow([s.student, s.canvas_id, "", "", "", f"{report['score']:g}"])
    return buffer.getvalue()


def feedback_markdown(report: dict) -> str:
    """A feedback page a student can read anywhere: the score, then what lost points and why."""
    lines = [f"# {report['assignment']}: {report['score']:g}/{report['max_score']:g}", ""]
    if report["status"] == "failed":
        lines += [f"**Your notebook did not run to the end:** {report['error']}", ""]
    for ex in report["exercises"]:
        lines += [f"## Exercise {ex['id']}: {ex['score']:g}/{ex['max_score']:g}", ""]
        lost = [v for v in report["variables"] if v["exercise"] == ex["id"] and v["points"] < v["max_points"]]
        lines += [f"- `{v['name']}` ({v['status']}): {v['message']}" for v in lost] or ["Every gradient is right."]
        lines.append("")
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Summary:
    """The class at a glance."""

    students: int
    """How many were graded."""
    scores: tuple[float, ...]
    """Every total, sorted."""
    max_score: float
    """Points available."""
    right: tuple[tuple[str, float], ...]
    """Per variable (`ex1:d_probs`), the share of students who earned its points, in rubric order."""
    failed: int
    """Notebooks that did not run to the end."""


def summarize(rubric: Rubric, report_files: list[dict]) -> Summary:
    """Score distribution and, per variable, the share of the class that got it right (pure)."""
    n = len(report_files)
    columns = _columns(rubric)
    earned = dict.fromkeys(columns, 0)
    for r in report_files:
        for v in r["variables"]:
            key = f"{v['exercise']}:{v['name']}"
            if key in earned and v["points"] >= v["max_points"] > 0:
                earned[key] += 1
    return Summary(n, tuple(sorted(r["score"] for r in report_files)), rubric.max_score,
                   tuple((c, earned[c] / n if n else 0.0) for c in columns),
                   sum(r["status"] == "failed" for r in report_files))


def summary_text(summary: Summary, problems: Iterable[str] = ()) -> str:
    """The class summary as plain text: the distribution, then the variables from hardest to easiest."""
    s = summary
    lines = [f"{s.students} students graded, {s.failed} notebooks did not run to the end"]
    if s.scores:
        median = s.scores[len(s.scores) // 2]
        lines.append(f"scores out of {s.max_score:g}: min {s.scores[0]:g}, median {median:g}, max {s.scores[-1]:g}")
        bins = 5
        counts = [0] * bins
        for x in s.scores:
            counts[min(bins - 1, int(bins * x / s.max_score)) if s.max_score else 0] += 1
        for i, c in enumerate(counts):
            lo, hi = s.max_score * i / bins, s.max_score * (i + 1) / bins
            lines.append(f"  {lo:5.1f} - {hi:5.1f} {'#' * c} {c}")
        lines.append("share of the class with each gradient right, hardest first:")
        for name, share in sorted(s.right, key=lambda x: x[1]):
            lines.append(f"  {name:22s} {share:6.0%}  {'#' * round(20 * share)}")
    lines += [f"note: {p}" for p in problems]
    return "\n".join(lines)


def summary_png(summary: Summary, path: Path) -> bytes:
    """The same summary as a picture: the score histogram and the share right per variable (written to
    `path`, and returned as PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, _ in summary.right]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(4, 0.25 * len(names))),
                                      gridspec_kw={"width_ratios": [1, 1.3]})
    left.hist(summary.scores, bins=min(20, max(1, int(summary.max_score))), range=(0, summary.max_score or 1))
    left.set(title=f"Scores ({summary.students} students)", xlabel=f"points out of {summary.max_score:g}",
             ylabel="students")
    right.barh(range(len(names)), [share for _, share in summary.right])
    right.set_yticks(range(len(names)), names, fontsize=7)
    right.invert_yaxis()
    right.set(xlim=(0, 1), title="Share of the class with the gradient right", xlabel="share of students")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    _write_atomically(path, buffer.getvalue())
    return buffer.getvalue()


def answer_cells(rubric: Rubric, path: Path) -> str:
    """The source of a submission's answer cells, one after another (for the class report's code similarity)."""
    answers = {ex.cell for ex in rubric.exercises}
    try:
        nb = notebook.read(path)
    except GraderError:
        return ""
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code" and notebook.grade_id(c) in answers)


def write_outputs(out: Path, assignment: str, found: Found, canvas_column: str | None = None) -> Summary:
    """Rebuild grades.csv, the feedback files, the summary and the class report (class.json, class.html) from
    the reports of `found`'s students; and canvas.csv where submissions came from a Canvas download
    (`canvas_column`: the assignment's column there, default its name)."""
    from grader.reports import class_report

    rubric = rubrics.load(assignment)
    loaded = []
    for s in found.submissions:
        report = _existing(out / "reports" / f"{s.student}.json", s.digest)
        if report is not None:
            loaded.append(report)
            _write_atomically(out / "feedback" / f"{s.student}.md", feedback_markdown(report))
    _write_atomically(out / "grades.csv", gradebook_csv(rubric, loaded, (s.student for s in found.submissions if s.late)))
    if any(s.canvas_id for s in found.submissions):
        _write_atomically(out / "canvas.csv", canvas_csv(found.submissions, loaded, canvas_column or assignment))
    summary = summarize(rubric, loaded)
    _write_atomically(out / "summary.txt", summary_text(summary, found.problems) + "\nthe class, its mistakes and shared answers: class.html\n")
    picture = summary_png(summary, out / "summary.png")
    paths = {s.student: s.path for s in found.submissions}
    built = class_report.build(rubric, loaded, lambda student: answer_cells(rubric, paths[student]))
    _write_atomically(out / "class.json", class_report.to_json(built))
    pages = {r["student"] for r in loaded if (out / "feedback" / f"{r['student']}.html").is_file()}
    _write_atomically(out / "class.html", class_report.to_html(built, picture, pages))
    return summary
