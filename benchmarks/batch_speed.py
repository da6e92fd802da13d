"""How fast `grader grade` grades a class, against the physical floor and against nbgrader, in one run.

    python benchmarks/batch_speed.py [--students 40] [--timeout 5] [--jobs 2] [--skip-nbgrader] [--dask N]
                                     [--nbgrader-students N]
                                     [--sandbox auto|linux|portable] [--userns]

Makes N synthetic submissions of backprop_ninja (mostly correct, some wrong, three in every 60 sharing two
odd wrong answers, a few that crash, one that never ends), then measures on the same submissions:

- `grader grade` (with the rubric's two hidden re-runs), wall time, in a fresh output folder, and the part
  of it that writes the class report (class.json, class.html), timed again in this process on its output
  (the groups sharing answers named, so their answer cells and ten others' are read and compared);
- the physical floor: the time the cells after the shared setup take (the answers, and the locked
  forward pass and short training run they feed), every run of every submission, one after another
  in this one warm process; a submission that never ends counts for its timeout, once;
- `nbgrader autograde` of the same notebooks (or every k-th of them, `--nbgrader-students`: its throughput is per
  notebook) in a temporary nbgrader course, the same per-cell timeout;
- with `--dask N`: `grader grade --scheduler` on a cluster of N local Dask workers (as `local:N` starts one),
  beside the local pool's throughput; the cluster's start-up is timed on its own line, outside the ratio;
- with `--sandbox portable`: the portable backend (a fresh interpreter per submission), as on macOS and
  Windows; with `--userns`: the Linux backend in the mode an ordinary user gets (user namespaces of its
  own), even when run as root, and then the same batch in root's own mode beside it.

and prints the ratios, and the largest peak memory of any run (a fork of the warm worker).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ATEN_CPU_CAPABILITY", "default")  # the grader's kernels, before torch is imported

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nbformat  # noqa: E402 -- after the environment above, which torch reads on import

from grader import assets, notebook  # noqa: E402 -- from the checkout put on sys.path above
from grader import assignment as assignments  # noqa: E402 -- as above
from grader import plan as plans  # noqa: E402 -- as above
from grader.sandbox.cgroups import memory_limit  # noqa: E402 -- as above
from grader.sandbox.limits import default_jobs  # noqa: E402 -- as above

NAME = "backprop_ninja"
SOLUTION = ROOT / "solutions" / f"{NAME}.ipynb"
RELEASE = ROOT / "assignments" / f"{NAME}.ipynb"


def _answered(*replace: tuple[str, str, str]) -> nbformat.NotebookNode:
    """The release with the solution's answers pasted in; each of `replace` = (cell, old, new) edits an answer."""
    released = nbformat.read(RELEASE, as_version=4)
    solution = {
        c.metadata.get("nbgrader", {}).get("grade_id"): c.source for c in nbformat.read(SOLUTION, as_version=4).cells
    }
    for cell in released.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = "\n".join(line for line in solution[gid].splitlines() if "### " not in line)
            for cell_id, old, new in replace:
                if cell_id == gid:
                    assert old in cell.source
                    cell.source = cell.source.replace(old, new)
    return released


WRONG = [
    ("ex1", "d_W2 = h.T @ d_logits", "d_W2 = h.T @ d_logits / n"),
    ("ex1", "d_b2 = d_logits.sum(0)", "d_b2 = d_logits.sum(1)"),
    ("ex2", "d_logits[range(n), Yb] -= 1", "d_logits[range(n), Yb] -= 2"),
]


def shared(group: int) -> tuple[tuple[str, str, str], ...]:
    """Two odd wrong answers without a hint, the same for the three students of `group` and no one else: what
    the class report names as shared, reading their answer cells and ten others' for the code similarity."""
    return (
        ("ex1", "d_W2 = h.T @ d_logits", f"d_W2 = h.T @ d_logits * {0.9 - 0.01 * group:.2f}"),
        (
            "ex1",
            "d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True)",
            f"d_bngain = (bnraw * d_hpreact).sum(0, keepdim=True) + {0.01 * (group + 1):.2f}",
        ),
    )


def make_class(folder: Path, students: int) -> dict[str, str]:
    """Write the submissions (nbgrader's layout); returns student -> kind. One group of three students
    sharing wrong answers in every 60."""
    kinds = {}
    for i in range(students):
        kind = (
            "timeout"
            if i == students // 2
            else "shared"
            if i % 60 in (7, 8, 9)
            else "crash"
            if i % 13 == 5
            else "wrong"
            if i % 5 == 2
            else "correct"
        )
        if kind == "correct":
            nb = _answered()
        elif kind == "shared":
            nb = _answered(*shared(i // 60))
        elif kind == "wrong":
            nb = _answered(WRONG[i % len(WRONG)])
        else:
            nb = _answered(
                ("ex1", "d_probs =", "undefined_name + 1\nd_probs =")
                if kind == "crash"
                else ("ex1", "d_probs =", "while True:\n    pass\nd_probs =")
            )
        student = f"s{i:03d}"
        (folder / student / NAME).mkdir(parents=True)
        nbformat.write(nb, str(folder / student / NAME / f"{NAME}.ipynb"))
        kinds[student] = kind
    return kinds


def dask_grade(submitted: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """`grader grade --scheduler` on a cluster of `args.dask` local workers started here first, as `local:N` would
    start it: (the grading's wall time, the cluster's start-up), apart. The grading includes what the local pool's
    time includes too: each worker's warm sandbox worker, started by its first task."""
    from grader.integrations.cluster import local_cluster

    kept = dict(os.environ)
    os.environ.clear()
    os.environ.update(ENV)  # the workers' environment: the one every `grader grade` here runs with
    started = time.perf_counter()
    cluster = local_cluster(args.dask)
    startup = time.perf_counter() - started
    os.environ.clear()
    os.environ.update(kept)
    try:
        scheduler = str(cluster.scheduler_address)
        return grader_grade(
            submitted, out, args.jobs, args.timeout, "--scheduler", scheduler, "--sandbox", args.sandbox
        ), startup
    finally:
        cluster.close()


def grader_grade(submitted: Path, out: Path, jobs: int, timeout: float, *extra: str) -> float:
    grader = shutil.which("grader") or str(Path(sys.executable).parent / "grader")
    started = time.perf_counter()
    subprocess.run(
        [
            grader,
            "grade",
            str(submitted),
            "--assignment",
            NAME,
            "--out",
            str(out),
            "--jobs",
            str(jobs),
            "--timeout",
            str(timeout),
            *extra,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    return time.perf_counter() - started


ENV = dict(os.environ)
"""The grader's environment (`--userns` adds to it)."""


def physical_floor(submitted: Path, kinds: dict[str, str], timeout: float) -> float:
    """Seconds the cells after the shared setup take, all runs of all submissions, in one warm process."""
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    torch.set_num_threads(1)
    assignment = assignments.load(NAME)
    rubric, released = assignment.rubric, assignment.released
    main = dict(assignment.published) | (rubric.grading_parameters or {}) | {"data_path": assets.names_path()}
    settings = [main] + [main | h for h in rubric.hidden_runs]
    shell = InteractiveShell.instance(cache_size=0)
    first = plans.plan(released, assignment, main).cells
    setup = max(i for i, c in enumerate(first) if c.grade_id in rubric.setup_cells)
    for cell in first[: setup + 1]:
        shell.run_cell(cell.source, silent=True)
    after_setup = dict(shell.user_ns)
    total = 0.0
    devnull = open(os.devnull, "w")  # noqa: SIM115 -- the benchmark's child processes share it to the end
    for student, kind in sorted(kinds.items()):
        if kind == "timeout":
            total += timeout  # its first run must be waited out; the grader does not start the others
            continue
        nb = notebook.read(submitted / student / NAME / f"{NAME}.ipynb")
        for params in settings:
            cells = plans.plan(nb, assignment, params).cells
            shell.user_ns.clear()
            shell.user_ns.update(after_setup)
            stdout, sys.stdout = sys.stdout, devnull
            try:
                shell.run_cell(plans.injected_source(params), silent=True)
                started = time.perf_counter()
                for cell in cells[setup + 1 :]:
                    with torch.set_grad_enabled(not cell.no_grad):
                        shell.run_cell(cell.source, silent=True)
                total += time.perf_counter() - started
            finally:
                sys.stdout = stdout
    return total


PHASES = [  # (from, to, what): the steps of one run on the Linux backend, as its processes stamp them
    ("cap", "capped", "the run's cgroup made (grader)"),
    ("capped", "sent", "the job handed to the worker (grader; once per submission)"),
    ("sent", "received", "the worker forks the job's supervisor (once per submission)"),
    ("received", "namespaces", "namespaces (unshare; once per submission)"),
    ("namespaces", "process1", "process 1 forked (once per submission)"),
    ("process1", "view", "mounts and pivot_root (the view of the files; once per submission)"),
    ("cleaning", "view", "the last run's processes killed, /tmp and /dev/shm renewed (later runs)"),
    ("view", "job", "process 1 ready to fork the run"),
    ("job", "cgroup", "the run's process forked, the cgroup joined"),
    ("cgroup", "data", "the data files written"),
    ("data", "privileges", "privileges dropped (rlimits, ids)"),
    ("privileges", "filter", "the seccomp filter loaded"),
    ("filter", "ended", "the cells, and the results written"),
    ("ended", "counted", "process 1 reaps it and counts strays"),
    ("counted", "reported", "the supervisor reports"),
    ("reported", "report", "the report reaches the grader"),
    ("report", "uncapped", "the cgroup read and removed (grader)"),
    ("uncapped", "collected", "the results read (grader)"),
]


def breakdown(path: Path) -> list[tuple[str, float, float]]:
    """Per step of a run (`PHASES`): (what, median milliseconds, seconds in all), from `GRADER_TIMINGS`'s file."""
    import statistics

    runs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    out = []
    for start, end, what in PHASES:
        spans = [r[end] - r[start] for r in runs if start in r and end in r]
        if spans:
            out.append((what, 1000 * statistics.median(spans), sum(spans)))
    return out


def class_report_time(out: Path, submitted: Path, rounds: int = 5) -> tuple[float, int]:
    """Median seconds `grader grade` spends on the class report (class.json, class.html) once the reports are
    graded: the same calls `batch.write_outputs` makes, on the finished output folder, in this process; and
    how many groups sharing answers it named."""
    import statistics

    from grader import batch
    from grader.reports import class_report

    rubric = assignments.rubric_of(NAME)
    reports = [json.loads(p.read_text()) for p in sorted((out / "reports").glob("*.json"))]
    picture = (out / "summary.png").read_bytes()
    paths = {p.parent.parent.name: p for p in submitted.glob(f"*/{NAME}/{NAME}.ipynb")}
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        built = class_report.build(rubric, reports, lambda s: batch.answer_cells(rubric, paths[s]))
        class_report.to_json(built)
        class_report.to_html(built, picture, [r["student"] for r in reports])
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(built.shared_wrong_answers)


def nbgrader_autograde(submitted: Path, timeout: float, students: list[str]) -> float:
    """Wall time of `nbgrader autograde` on the same submissions (those of `students`), in a new course."""
    course = Path(tempfile.mkdtemp(prefix="nbgrader-course-"))
    try:
        (course / "source" / NAME).mkdir(parents=True)
        shutil.copyfile(SOLUTION, course / "source" / NAME / f"{NAME}.ipynb")
        shutil.copyfile(ROOT / "nbgrader_config.py", course / "nbgrader_config.py")
        nbgrader = [sys.executable, "-m", "nbgrader"]
        subprocess.run([*nbgrader, "generate_assignment", NAME], cwd=course, check=True, capture_output=True)
        for student in students:
            shutil.copytree(submitted / student, course / "submitted" / student)
        started = time.perf_counter()
        subprocess.run(
            [*nbgrader, "autograde", NAME, f"--Execute.timeout={int(timeout)}"],
            cwd=course,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started
    finally:
        shutil.rmtree(course, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per notebook (nbgrader: per cell)")
    parser.add_argument("--jobs", type=int, default=default_jobs(memory_limit()), help="as `grader grade`'s default")
    parser.add_argument("--skip-nbgrader", action="store_true", help="do not run nbgrader (it takes minutes)")
    parser.add_argument(
        "--nbgrader-students", type=int, metavar="N", help="run nbgrader on about N of them (every k-th), not all"
    )
    parser.add_argument(
        "--dask", type=int, metavar="N", help="also grade on N local Dask workers (--scheduler local:N)"
    )
    parser.add_argument(
        "--sandbox",
        choices=["auto", "linux", "portable"],
        default="auto",
        help="the grader's sandbox backend (default: the best that works here)",
    )
    parser.add_argument(
        "--userns",
        action="store_true",
        help="the Linux backend in an ordinary user's mode (user namespaces), even as root",
    )
    args = parser.parse_args()
    if args.userns:
        ENV["GRADER_LINUX_MODE"] = "userns"
    from grader import sandbox

    backend = sandbox.choose(args.sandbox) if not args.userns else sandbox.Backend("linux", "userns")
    print(f"sandbox: {backend.name}" + (f" ({backend.mode})" if backend.mode else ""))

    with tempfile.TemporaryDirectory(prefix="batch-speed-") as tmp:
        submitted = Path(tmp) / "submitted"
        kinds = make_class(submitted, args.students)
        counts = {k: list(kinds.values()).count(k) for k in ("correct", "wrong", "shared", "crash", "timeout")}
        print(f"{args.students} submissions: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        ENV["GRADER_TIMINGS"] = str(Path(tmp) / "timings.jsonl")  # (the Linux backend's breakdown of each run)
        ours = grader_grade(submitted, Path(tmp) / "out", args.jobs, args.timeout, "--sandbox", args.sandbox)
        del ENV["GRADER_TIMINGS"]
        steps = breakdown(Path(tmp) / "timings.jsonl")
        as_root = None
        if args.userns and os.geteuid() == 0:  # the same batch in root's mode, for the comparison
            del ENV["GRADER_LINUX_MODE"]
            as_root = grader_grade(submitted, Path(tmp) / "out-root", args.jobs, args.timeout, "--sandbox", "linux")
            ENV["GRADER_LINUX_MODE"] = "userns"
        reports = [json.loads(p.read_text()) for p in (Path(tmp) / "out" / "reports").glob("*.json")]
        peak = max((r.get("peak_memory_mb") or 0 for r in reports), default=0)
        report_time, groups = class_report_time(Path(tmp) / "out", submitted)
        dask, startup = dask_grade(submitted, Path(tmp) / "out-dask", args) if args.dask else (None, None)
        floor = physical_floor(submitted, kinds, args.timeout)
        # nbgrader on every k-th submission where asked for fewer (k = students // N), the one that never ends
        # among them in place of its neighbour: its throughput is per notebook, on the same mix
        sample = sorted(kinds)[:: max(1, args.students // (args.nbgrader_students or args.students))]
        endless = [s for s, kind in kinds.items() if kind == "timeout"]
        if endless and endless[0] not in sample:
            sample[min(range(len(sample)), key=lambda i: abs(int(sample[i][1:]) - int(endless[0][1:])))] = endless[0]
        theirs = None if args.skip_nbgrader else nbgrader_autograde(submitted, args.timeout, sample)

    n = args.students
    print(f"grader grade (--jobs {args.jobs}, 2 hidden re-runs): {ours:7.2f} s  ({n / ours:6.2f} notebooks/s)")
    if as_root is not None:
        print(f"the same as root (its own mode):               {as_root:7.2f} s  ({n / as_root:6.2f} notebooks/s)")
        print(f"throughput as an ordinary user / as root:   {as_root / ours:6.2f}   (target: about 1)")
    if dask is not None:
        print(f"Dask cluster start-up ({args.dask} local workers):      {startup:7.2f} s  (not in the ratio below)")
        print(f"grader grade on that cluster:                  {dask:7.2f} s  ({n / dask:6.2f} notebooks/s)")
    print(
        f"of which the class report (class.json, .html): {report_time:7.2f} s  ({100 * report_time / ours:.2f} %, "
        f"target: under 5 %; {groups} groups sharing answers named)"
    )
    print(f"physical floor (one warm process, serial):     {floor:7.2f} s")
    if theirs is not None:
        m = len(sample)
        print(f"nbgrader autograde ({m} of them):              {theirs:7.2f} s  ({m / theirs:6.2f} notebooks/s)")
    print(f"ratio grader grade / physical floor:        {ours / floor:6.2f}   (target: at most 3)")
    if theirs is not None:
        target = 5 if backend.name == "portable" else 30
        ratio = (n / ours) / (len(sample) / theirs)
        print(f"throughput grader grade / nbgrader:         {ratio:6.2f}   (target: at least {target})")
    if dask is not None:
        print(f"throughput local:{args.dask} Dask workers / local pool:  {ours / dask:6.2f}")
    print(f"largest peak memory of a run:               {peak:6.0f} MB (target: under 500)")
    if steps:
        print("where a run's time goes (Linux backend; median per run, and in all over the batch):")
        for what, median_ms, total in steps:
            print(f"  {what:55s} {median_ms:8.2f} ms  {total:7.2f} s")


if __name__ == "__main__":
    main()
