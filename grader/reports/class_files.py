"""The class's own files, each a function of the graded reports: grades.csv, canvas.csv, the Markdown feedback,
the summary (text and picture).

Pure but for `summary_png`, which also writes its picture: nothing here reads a notebook or runs one. The
columns follow the rubric's order (exercise, then variable), so two batches of the same assignment have the
same gradebook layout whatever their students handed in.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from grader.reports.files import write_atomically
from grader.rubric import Rubric
from grader.submissions import Submission


def _columns(rubric: Rubric) -> list[str]:
    """`ex1:d_probs` for every graded variable, in the rubric's order: the gradebook's columns."""
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
        writer.writerow(
            [
                r["student"],
                r["status"],
                f"{r['score']:g}",
                f"{r['max_score']:g}",
                *(f"{points.get(c, 0.0):g}" for c in columns),
                r["error"],
                "yes" if r["student"] in late else "",
            ]
        )
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
    return Summary(
        n,
        tuple(sorted(r["score"] for r in report_files)),
        rubric.max_score,
        tuple((c, earned[c] / n if n else 0.0) for c in columns),
        sum(r["status"] == "failed" for r in report_files),
    )


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
    import matplotlib  # (matplotlib: only the picture needs it, and its Agg backend is chosen before pyplot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (now that the backend is chosen)

    names = [n for n, _ in summary.right]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, max(4, 0.25 * len(names))), gridspec_kw={"width_ratios": [1, 1.3]}
    )
    left.hist(summary.scores, bins=min(20, max(1, int(summary.max_score))), range=(0, summary.max_score or 1))
    left.set(
        title=f"Scores ({summary.students} students)", xlabel=f"points out of {summary.max_score:g}", ylabel="students"
    )
    right.barh(range(len(names)), [share for _, share in summary.right])
    right.set_yticks(range(len(names)), names, fontsize=7)
    right.invert_yaxis()
    right.set(xlim=(0, 1), title="Share of the class with the gradient right", xlabel="share of students")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomically(path, buffer.getvalue())
    return buffer.getvalue()
