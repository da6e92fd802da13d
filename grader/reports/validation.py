"""Stage 7 for authors: `grader validate`'s findings as a person reads them, or as one JSON object."""

from __future__ import annotations

import dataclasses
import json

from grader.validate import Validation


def to_json(result: Validation) -> str:
    """The validation as one JSON object (its fields are the schema)."""
    out = dataclasses.asdict(result)
    out["exit_code"] = result.exit_code()
    return json.dumps(out, indent=2, allow_nan=False, default=str)


def to_text(result: Validation) -> str:
    """The validation as a person reads it: errors, the noise table, the mistakes table, warnings, a verdict."""
    lines = [f"grader validate {result.name}"]
    for e in result.errors:
        lines.append(f"  error: {e}")
    if result.solution:
        lines += [f"  the solution: {result.solution}", f"  the untouched release: {result.release}"]
    if result.noise:
        lines += ["", f"Tolerances (the solution against autograd over {result.seeds} runs):"]
        lines.append(f"  {'variable':<22} {'noise':>10} {'atol':>10}  ")
        for n in result.noise:
            lines.append(f"  {n.variable:<22} {n.excess:>10.2g} {n.atol:>10.2g}  {'ok' if n.fits else 'TOO TIGHT'}")
    if result.mistakes:
        lines += ["", f"Mistakes ({_counts(result)}):"]
        lines.append(f"  {'verdict':<14} {'costs':<28} mistake / hint")
        for m in result.mistakes:
            costs = ", ".join(m.cost) or "-"
            costs = costs if len(costs) <= 28 else costs[:26] + " …"
            lines.append(f"  {m.verdict:<14} {costs:<28} {m.name}")
            if m.hint and m.verdict != "same as":
                lines.append(f"  {'':<14} {'':<28}   hint: {m.hint}")
            if m.why:
                lines.append(f"  {'':<14} {'':<28}   ({m.why})")
    if result.warnings:
        lines += ["", f"{len(result.warnings)} warnings (exit 1 with --strict):"]
        lines += [f"  warning: {w}" for w in result.warnings]
    verdict = "FAILED" if result.errors else "ok"
    lines += ["", f"{result.name}: {verdict} in {result.seconds:.0f} s"]
    return "\n".join(lines)


def _counts(result: Validation) -> str:
    s = result.stats
    return (
        f"{s.get('derived', 0)} derived, {s.get('written', 0)} written, {s.get('distinct', 0)} distinct; "
        f"{s.get('caught', 0)} caught, {s.get('hinted', 0)} with a hint"
    )
