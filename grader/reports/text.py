"""Stage 7: show a `Report`, as cmp-style text for a terminal or as one JSON object."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grader.verdicts import Report


def _points(x: float) -> str:
    return f"{x:g}"


def to_dict(report: Report) -> dict:
    """The `grader check --json` object (its fields: docs/instructors.md, "Statuses, JSON and exit codes")."""
    return asdict(report)


def to_json(report: Report) -> str:
    """`to_dict` as indented JSON."""
    return json.dumps(to_dict(report), indent=2)


def to_text(report: Report) -> str:
    """One cmp-style table per exercise, then the exercise and total scores."""
    lines = [f"{report.assignment}: {report.notebook}"]
    if report.status == "failed":
        lines.append(f"FAILED: {report.error}")
    for ex in report.exercises:
        lines.append("")
        lines.append(f"Exercise {ex.id}: {_points(ex.score)}/{_points(ex.max_score)}")
        for v in (v for v in report.variables if v.exercise == ex.id):
            maxdiff = "-" if v.maxdiff is None else f"{v.maxdiff:.3g}"
            # a gradient is named by its tensor (as cmp does), a value by its own name
            label = v.of if v.name.startswith("d") else v.name
            line = (
                f"  {label:15s} | exact: {v.exact!s:5s} | approximate: {v.approximate!s:5s} "
                f"| maxdiff: {maxdiff:9s} | {_points(v.points)}/{_points(v.max_points)}"
            )
            if v.message:
                line += f"  {'warning' if v.status in ('exact', 'approximate') else v.status}: {v.message}"
            lines.append(line)
    hidden = report.runs[1:]
    if hidden:
        lines.append("")
        finished = sum(r.status == "graded" for r in hidden)
        lines.append(
            f"Hidden re-runs: {finished} of {len(hidden)} ran to the end; "
            "a variable earns its points only if it is right in every run"
        )
    if report.notes:
        lines.append("")
        lines.extend(f"note: {n}" for n in report.notes)
    lines.append("")
    lines.append(f"Total: {_points(report.score)}/{_points(report.max_score)}")
    return "\n".join(lines).translate(_VISIBLE)


# Control characters from the notebook (an exception's message, a cell's first line) shown as escapes: written
# to a terminal as they are, `\x1b[2J` clears it and other sequences rewrite what it shows or its title.
_VISIBLE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)] if chr(c) not in "\n\t"}
