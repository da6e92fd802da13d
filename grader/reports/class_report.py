"""The class report: what the class got right, which mistakes it made, and which wrong answers were shared.

A function of the batch's reports (and of the answer cells of the students it names and of a sample of
ten others), written by `grader grade` as `class.json` and `class.html`. What it guarantees:

- **A mistake is counted where it is made.** Only *root mistakes* count: a variable whose own backward
  step is wrong (`local_status` not passing). A value that is wrong only because an earlier gradient
  is wrong is not a mistake of its own, so one early slip is one mistake, not twenty.
- **Mistakes are grouped by what they are**: by the hint the grader gave (`hint` in the report, data,
  never the message's text); a wrong answer without a hint is grouped with the identical answers of
  others ("no hint: off by up to ..."), and answers that are not wrong values (missing, an error) are
  listed apart as not answered.
- **Students are named as sharing wrong answers only on identical wrong values in root mistakes of at
  least two variables, each one the grader names no textbook mistake for, and each uncommon in the
  class.** A mistake with a hint (a factor n, a sign, a transpose, n instead of n-1...) is one students
  make on their own, and make identically: never evidence, however many of them two students share. An
  answer many students give is a common mistake, not evidence, even though it makes every gradient below
  it identical for all of them (those are not root mistakes anyway); one shared answer is never enough.
  Groups are ranked by how rare their shared answers are. Beside each group, a token similarity of their
  answer cells that ignores whitespace, comments and variable names, with the class's typical similarity
  for comparison: a second signal.
  Either is a lead for a conversation with the students, never proof.
"""

from __future__ import annotations

import base64
import builtins
import io
import json
import keyword
import re
import statistics
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from itertools import combinations

from grader.reports.pages import templates
from grader.rubric import Rubric
from grader.verdicts import PASSING

COMMON_STUDENTS, COMMON_SHARE = 3, 0.25
"""An identical wrong answer given by more than max(COMMON_STUDENTS, COMMON_SHARE of the class) students is
a common mistake: never evidence of shared work. (A share, not a head count: a ring of four in a class of
twenty, or of five in a class of sixty, shares answers no one else gave.)"""
SHARED_AT_LEAST = 2
"""Least number of variables whose uncommon wrong answers two students must share to be named together."""
EVIDENCE_STATUSES = ("wrong", "shape")
"""The statuses of answers that are wrong values, and so can be evidence; an answer that used autograd or
hides it (its value may be the right one) or is not finite (every road to a NaN ends at the same one) is
not a fingerprint."""
TYPICAL_SAMPLE = 10
"""Students (besides those named) whose answer cells give the class's typical code similarity."""
SHINGLE = 5
"""Tokens per run compared by the code similarity (a line of an answer is about ten)."""
MAX_SOURCE = 200_000
"""Characters of a student's answer cells read for the code similarity."""

_UNANSWERED = ("missing", "error")
_LABELS = {
    "shape": "wrong shape",
    "dtype": "wrong dtype",
    "not_finite": "not finite (NaN or infinity)",
    "not_tensor": "not a plain tensor",
    "autograd_used": "uses autograd",
    "suspicious": "code that could hide autograd",
}


@dataclass(frozen=True)
class Mistake:
    """One mistake the class made in one variable."""

    hint: str
    """What it is: the grader's hint, or `no hint: off by up to X` for identical answers without one."""
    students: tuple[str, ...]
    """Who made it (as a root mistake), sorted."""


@dataclass(frozen=True)
class VariableMistakes:
    """One graded variable across the class."""

    exercise: str
    """Exercise id, e.g. `ex1`."""
    name: str
    """The variable, e.g. `d_probs`."""
    right: float | None
    """Share of the class that earned its points; None for a class of no students."""
    mistakes: tuple[Mistake, ...]
    """The root mistakes made in it, most common first."""
    not_answered: tuple[str, ...]
    """Students with no value to judge (missing, or the run stopped before it)."""


@dataclass(frozen=True)
class SharedAnswers:
    """Students whose submissions share identical, uncommon wrong answers."""

    students: tuple[str, ...]
    """Who, sorted."""
    variables: tuple[str, ...]
    """The shared root mistakes, as `exercise/variable`, in rubric order."""
    rarity: float
    """How rare the shared answers are: the product over them of (class size / students who gave that
    answer), for the pair that shares the rarest; about "one student in this many" would give them all by
    chance if students answered independently as often as the class did."""
    code_similarity: float | None
    """Mean token similarity (0 to 1) of their answer cells over the group's pairs, whitespace, comments and
    names ignored (`similarity`); None where the cells could not be read."""


@dataclass(frozen=True)
class StudentRow:
    """One student's line of the roster."""

    student: str
    """The student's id."""
    score: float
    """Points earned."""
    max_score: float
    """Points available."""
    status: str
    """`graded`, or `failed` when the notebook did not run to the end."""


@dataclass(frozen=True)
class ClassReport:
    """The class at a glance: scores, mistakes, shared wrong answers."""

    assignment: str
    """The assignment's name."""
    students: int
    """How many reports it was built from."""
    score: dict
    """`max_score`, `min`, `median`, `mean`, `max`, and `histogram`: [{`from`, `to`, `students`}], ten bins."""
    variables: tuple[VariableMistakes, ...]
    """Every graded variable, in rubric order."""
    shared_wrong_answers: tuple[SharedAnswers, ...]
    """Groups sharing wrong answers, rarest first."""
    code_similarity_typical: float | None
    """The median similarity of answer cells between students not named in a group (for comparison); None
    when no group was found or too few cells could be read."""
    roster: tuple[StudentRow, ...]
    """Every student, sorted by id."""


def _key(v: dict) -> str:
    return f"{v['exercise']}/{v['name']}"


def root_mistakes(report: dict) -> list[dict]:
    """The variables of `report` whose own step is wrong (not those wrong only because of an earlier one)."""
    return [
        v
        for v in report["variables"]
        if v["status"] not in PASSING and (v.get("local_status") or v["status"]) not in PASSING
    ]


def common_limit(students: int) -> float:
    """The most students that may give an identical wrong answer for it to be uncommon in a class of `students`."""
    return max(COMMON_STUDENTS, COMMON_SHARE * students)


def evidence(v: dict) -> bool:
    """Whether the root mistake `v` could, shared, be evidence of shared work: a wrong value the grader names
    no textbook mistake for (an empty `hint`). Decided on the report's data, never on its message."""
    return v["status"] in EVIDENCE_STATUSES and not v.get("hint")


def _label(v: dict, answer: str) -> str:
    """What a root mistake is, as the class report groups it."""
    runs = v.get("runs") or []
    if runs and runs[0] in PASSING:
        return f"right with the notebook's parameters only: {v['status'].replace('_', ' ')} in a hidden run"
    if v.get("hint"):
        return v["hint"]
    if v["status"] == "wrong":
        off = f"off by up to {v['maxdiff']:.3g}" if v.get("maxdiff") is not None else "off"
        return f"no hint: {off}" + (f" (answer {answer[:8]})" if answer else "")
    return _LABELS.get(v["status"], v["status"])


def _score(reports: list[dict], max_score: float) -> dict:
    scores = sorted(r["score"] for r in reports)
    bins = 10
    counts = [0] * bins
    for x in scores:
        counts[min(bins - 1, int(bins * x / max_score)) if max_score else 0] += 1
    return {
        "max_score": max_score,
        "min": scores[0] if scores else None,
        "median": statistics.median(scores) if scores else None,
        "mean": round(statistics.fmean(scores), 3) if scores else None,
        "max": scores[-1] if scores else None,
        "histogram": [
            {"from": round(max_score * i / bins, 3), "to": round(max_score * (i + 1) / bins, 3), "students": c}
            for i, c in enumerate(counts)
        ],
    }


def _variables(rubric: Rubric, reports: list[dict]) -> tuple[VariableMistakes, ...]:
    out = []
    roots = {r["student"]: {_key(v): v for v in root_mistakes(r)} for r in reports}
    everything = {r["student"]: {_key(v): v for v in r["variables"]} for r in reports}
    for ex in rubric.exercises:
        for var in ex.graded:
            key = f"{ex.id}/{var.name}"
            made: dict[str, list[str]] = {}
            unanswered, right = [], 0
            for r in reports:
                v = everything[r["student"]].get(key)
                if v is None:
                    continue
                right += v["points"] >= v["max_points"] > 0
                root = roots[r["student"]].get(key)
                if root is None:
                    continue
                if root["status"] in _UNANSWERED:
                    unanswered.append(r["student"])
                    continue
                made.setdefault(_label(root, r.get("answers", {}).get(key, "")), []).append(r["student"])
            mistakes = sorted(
                (Mistake(h, tuple(sorted(s))) for h, s in made.items()), key=lambda m: (-len(m.students), m.hint)
            )
            out.append(
                VariableMistakes(
                    ex.id,
                    var.name,
                    right / len(reports) if reports else None,
                    tuple(mistakes),
                    tuple(sorted(unanswered)),
                )
            )
    return tuple(out)


def shared_answers(reports: list[dict]) -> list[tuple[tuple[str, ...], tuple[str, ...], float]]:
    """Groups of students sharing identical, uncommon wrong answers without a hint (`evidence`) in root mistakes
    of at least two variables: (students, `exercise/variable`s, rarity), rarest first. Students are linked pair
    by pair; a group is a set of students linked to one another through such pairs."""
    n = len(reports)
    common = common_limit(n)
    holders: dict[tuple[str, str], list[str]] = {}
    for r in reports:
        answers = r.get("answers") or {}
        for v in root_mistakes(r):
            if not evidence(v):  # a textbook mistake: students make it on their own, identically
                continue
            digest = answers.get(_key(v))
            if digest:
                holders.setdefault((_key(v), digest), []).append(r["student"])
    shared: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for answer, students in holders.items():
        if len(students) > common:  # a common mistake: made this way by many, on their own
            continue
        for pair in combinations(sorted(students), 2):
            shared.setdefault(pair, set()).add(answer)
    links = {pair: answers for pair, answers in shared.items() if len({v for v, _ in answers}) >= SHARED_AT_LEAST}

    def rarity(answers: set[tuple[str, str]]) -> float:
        product = 1.0
        for answer in answers:
            product *= n / len(holders[answer])
        return product

    # connected groups of linked students
    group_of: dict[str, set[str]] = {}
    for a, b in links:
        merged = group_of.get(a, {a}) | group_of.get(b, {b})
        for s in merged:
            group_of[s] = merged
    groups = {id(g): g for g in group_of.values()}.values()
    out = []
    for g in groups:
        pairs = [(p, answers) for p, answers in links.items() if p[0] in g]
        variables = sorted({v for _, answers in pairs for v, _ in answers})
        out.append((tuple(sorted(g)), tuple(variables), max(rarity(answers) for _, answers in pairs)))
    return sorted(out, key=lambda x: (-x[2], x[0]))


# --- code similarity ---------------------------------------------------------------------------------

_KEEP = frozenset(keyword.kwlist) | frozenset(dir(builtins))
_SKIP = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}
_FALLBACK = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\S")


def tokens(source: str) -> list[str]:
    """The code's tokens without whitespace and comments, every name but keywords, builtins and attributes
    (`.sum`) made `v`: `d_x = a.sum(0)  # hi` and `g=b.sum(0)` give the same tokens. (Names are dropped rather
    than numbered by first use: one helper variable more would renumber every name after it.)"""
    raw: list[tuple[int, str]] = []
    try:
        raw = [
            (t.type, t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in _SKIP
        ]
    except (tokenize.TokenError, SyntaxError, IndentationError):  # a cell that does not parse (magics): words
        lines = (line.split("#", 1)[0] for line in source.splitlines())
        raw = [
            (tokenize.NAME if w[0].isalpha() or w[0] == "_" else tokenize.OP, w)
            for line in lines
            for w in _FALLBACK.findall(line)
        ]
    out = []
    for i, (kind, text) in enumerate(raw):
        after_dot = i > 0 and raw[i - 1][1] == "."
        out.append("v" if kind == tokenize.NAME and text not in _KEEP and not after_dot else text)
    return out


def _shingles(a: list[str]) -> set[tuple[str, ...]]:
    return {tuple(a[i : i + SHINGLE]) for i in range(max(1, len(a) - SHINGLE + 1))}


def similarity(a: list[str], b: list[str]) -> float:
    """How alike two token sequences are, 0 to 1: the Jaccard index of their runs of SHINGLE tokens (linear
    in their length: a cell of megabytes costs the class report no more than its reading)."""
    if not a and not b:
        return 1.0
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / len(x | y)


def _mean_similarity(sources: list[list[str]]) -> float | None:
    pairs = [similarity(a, b) for a, b in combinations(sources, 2)]
    return round(statistics.fmean(pairs), 3) if pairs else None


def build(rubric: Rubric, reports: Iterable[dict], answer_cells: Callable[[str], str] | None = None) -> ClassReport:
    """The class report of `reports` (the batch's report dicts). `answer_cells(student)` gives a student's
    answer cells as one source text, asked only for the students in groups and a small sample of others."""
    reports = sorted(reports, key=lambda r: r["student"])
    groups = shared_answers(reports)
    cells: dict[str, list[str] | None] = {}

    def cell_tokens(student: str) -> list[str] | None:
        if student not in cells:
            source = answer_cells(student) if answer_cells is not None else ""
            cells[student] = tokens(source[:MAX_SOURCE]) if source else None
        return cells[student]

    order = {f"{ex.id}/{v.name}": i for i, (ex, v) in enumerate((ex, v) for ex in rubric.exercises for v in ex.graded)}
    shared = []
    for students, variables, rarity in groups:
        variables = tuple(sorted(variables, key=lambda k: (order.get(k, len(order)), k)))
        sources = [cell_tokens(s) for s in students]
        similar = (
            _mean_similarity([t for t in sources if t is not None]) if all(t is not None for t in sources) else None
        )
        shared.append(SharedAnswers(students, variables, round(rarity, 1), similar))
    typical = None
    if groups:
        named = {s for g in groups for s in g[0]}
        others = [r["student"] for r in reports if r["student"] not in named and r["status"] == "graded"]
        step = max(1, len(others) // TYPICAL_SAMPLE)  # spread over the class, the same sample every time
        sample = [t for t in (cell_tokens(s) for s in others[::step][:TYPICAL_SAMPLE]) if t is not None]
        pairs = [similarity(a, b) for a, b in combinations(sample, 2)]
        typical = round(statistics.median(pairs), 3) if pairs else None
    roster = tuple(StudentRow(r["student"], r["score"], r["max_score"], r["status"]) for r in reports)
    return ClassReport(
        rubric.assignment,
        len(reports),
        _score(reports, rubric.max_score),
        _variables(rubric, reports),
        tuple(shared),
        typical,
        roster,
    )


def to_dict(report: ClassReport) -> dict:
    """The `class.json` object (its fields: docs/instructors.md, "The class report")."""
    return asdict(report)


def to_json(report: ClassReport) -> str:
    """`to_dict` as indented JSON."""
    return json.dumps(to_dict(report), indent=2)


def to_html(report: ClassReport, summary_png: bytes | None = None, pages: Iterable[str] = ()) -> str:
    """The class page: one self-contained HTML file (`summary_png` inlined), each student linked to their
    feedback page (`feedback/<student>.html`, for the students in `pages`)."""
    picture = "data:image/png;base64," + base64.b64encode(summary_png).decode("ascii") if summary_png else ""
    by_exercise: dict[str, list[VariableMistakes]] = {}
    for v in report.variables:
        by_exercise.setdefault(v.exercise, []).append(v)
    return (
        templates()
        .get_template("class.html")
        .render(report=report, picture=picture, pages=set(pages), exercises=by_exercise)
    )
