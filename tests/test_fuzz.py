"""No input breaks the grader: damaged notebooks, seeded and reproducible.

Each case takes one of the released notebooks (`assignments/*.ipynb`) or a full-marks submission and damages
it one way (`KINDS`: cut or flipped bytes, other encodings, JSON that breaks the notebook schema in one
field, deep nesting, huge cells and outputs, thousands of cells, empty files, binary garbage). Every case
must end as `grader check` promises: a report (exit 0) or one line on stderr (exit 1), never a traceback,
another exit code or a hang.

Case `i` of seed `s` is always the same file (of the same sources): `python tests/test_fuzz.py I [--seed S]
[--out FILE]` writes it, to reproduce a failure by hand with `grader check FILE`.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NOTEBOOKS, ROOT, grader_command

SEED = 17
FAST_CASES = 300
"""Cases in the default suite; `--runslow` (CI) runs `SLOW_CASES`."""
SLOW_CASES = 1000
SOURCES = (*sorted((ROOT / "assignments").glob("*.ipynb")), NOTEBOOKS / "full_marks.ipynb")
CASE_SECONDS = 120
"""A case that takes longer than this counts as a hang (a run's own limit is `--timeout`, below)."""
RUN_TIMEOUT = "10"
"""`--timeout` of each run: an honest notebook runs in a second or two, and a release graded as another assignment
runs its own 200,000-step training loop (a report that says so is as good an answer as any)."""


@dataclass(frozen=True)
class Case:
    """One damaged file."""

    index: int
    """Its number within the seed: the same index and seed always give the same bytes."""
    kind: str
    """The kind of damage, a key of `KINDS`."""
    source: str
    """The file it was made from (a name in `SOURCES`)."""
    what: str
    """The damage, in a few words, for a failure message."""
    data: bytes
    """The file's bytes."""
    args: tuple[str, ...] = ()
    """Further arguments of `grader check` (`--assignment NAME` for some: graded as that assignment whatever it says)."""


# --- damage -------------------------------------------------------------------------------------------
# Each kind takes a generator, the source's bytes and its parsed JSON (a copy it may change) and returns
# the damaged bytes and a few words on what it did.

Damage = Callable[[random.Random, bytes, dict], tuple[bytes, str]]


def _dumps(nb: object) -> bytes:
    # ensure_ascii: lone surrogates and control characters survive as \u escapes; allow_nan: NaN is "JSON" too
    return json.dumps(nb, indent=1).encode("ascii")


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c.get("cell_type") == "code"]


def _answer_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("solution")] or _code_cells(nb)


def _source(cell: dict) -> str:
    s = cell.get("source", "")
    return s if isinstance(s, str) else "".join(s)


def cut(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    at = rng.choice([0, 1, 2, rng.randrange(len(raw)), len(raw) - 1, len(raw) - rng.randrange(1, 40)])
    return raw[:at], f"the first {at} of {len(raw)} bytes"


def flip(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    data = bytearray(raw)
    spots = sorted(rng.randrange(len(data)) for _ in range(rng.choice([1, 1, 2, 5, 50])))
    for at in spots:
        data[at] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
    return bytes(data), f"{len(spots)} bytes flipped, first at {spots[0]}"


def encoding(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    text = raw.decode("utf-8")
    if rng.random() < 0.5:  # something outside ASCII, so that a wrong encoding has something to get wrong
        nb["cells"][0]["source"] = "Gradients — naïve, ∂L/∂x, 😀\n" + _source(nb["cells"][0])
        text = json.dumps(nb, indent=1, ensure_ascii=False)
    name = rng.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-8-sig", "utf-8-sig", "latin-1", "cp1252"])
    return text.encode(name, errors="replace"), f"encoded as {name}"


def _walk(node: object, path: tuple = ()):
    """Every (container, key, path) below `node`."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield node, key, (*path, key)
        yield from _walk(value, (*path, key))


def _named(path: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def _important(nb: dict, rng: random.Random) -> tuple[object, object, tuple]:
    """A field the grader reads (rather than any node: most nodes are lines of source)."""
    i = rng.randrange(len(nb["cells"]))
    cell = nb["cells"][i]
    choices = [(nb, k, (k,)) for k in nb] + [(cell, k, ("cells", i, k)) for k in cell]
    meta = nb.get("metadata", {})
    choices += [(meta, k, ("metadata", k)) for k in meta]
    if isinstance(meta.get("grader"), dict):
        choices += [(meta["grader"], k, ("metadata", "grader", k)) for k in meta["grader"]]
    grading = cell.get("metadata", {}).get("nbgrader")
    if isinstance(grading, dict):
        choices += [(grading, k, ("cells", i, "metadata", "nbgrader", k)) for k in grading]
    return rng.choice(choices)


ODD_VALUES = [
    None,
    True,
    0,
    -1,
    2**70,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "x",
    [],
    [1, "a"],
    {},
    {"a": 1},
    [[[]]],
    "\udc80",
    "\x00",
]


def wrong_type(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    parent, key, path = _important(nb, rng) if rng.random() < 0.7 else rng.choice(list(_walk(nb)))
    value = rng.choice([v for v in ODD_VALUES if type(v) is not type(parent[key])])
    parent[key] = value
    return _dumps(nb), f"{_named(path)} = {value!r}"


def missing_key(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    dicts = [(p, k, path) for p, k, path in _walk(nb) if isinstance(p, dict)]
    parent, key, path = _important(nb, rng) if rng.random() < 0.7 else rng.choice(dicts)
    del parent[key]
    return _dumps(nb), f"{_named(path)} deleted"


def version(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    key = "nbformat" if rng.random() < 0.7 else "nbformat_minor"
    nb[key] = rng.choice(
        [3, 5, 0, 1, 2, -4, 10**30, "4", 4.0, 4.5, None, True, [4]]
        if key == "nbformat"
        else [0, 1, 4, 99, -1, "5", 5.5, None]
    )
    if key == "nbformat" and nb[key] == 3 and rng.random() < 0.5:
        nb["worksheets"] = [{"cells": nb.pop("cells"), "metadata": {}}]  # the shape nbformat 3 has
    return _dumps(nb), f"{key} = {nb[key]!r}"


def cell_ids(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    cells = nb["cells"]
    how = rng.choice(["duplicate", "odd", "missing", "all the same", "type"])
    if how == "duplicate":
        a, b = rng.sample(range(len(cells)), 2)
        cells[b]["id"] = cells[a].get("id", "x")
    elif how == "odd":
        rng.choice(cells)["id"] = rng.choice(["", " ", "a b", "../../x", "x" * 300, "é", "id\n", "\udc80", "-" * 64])
    elif how == "missing":
        for c in rng.sample(cells, rng.randrange(1, len(cells))):
            c.pop("id", None)
        nb["nbformat_minor"] = rng.choice([4, 5])
    elif how == "all the same":
        for c in cells:
            c["id"] = "same"
    else:
        rng.choice(cells)["id"] = rng.choice([5, None, ["a"], {"id": "a"}])
    return _dumps(nb), f"cell ids: {how}"


def tags(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    value = rng.choice(
        [
            "parameters",
            {"parameters": True},
            7,
            [1, 2],
            [["parameters"]],
            None,
            ["parameters"] * 3,
            ["parameters"],
            ["skip-execution"],
            ["raises-exception"],
            [None],
            ["x" * 10000],
        ]
    )
    targets = rng.sample(nb["cells"], rng.choice([1, 1, 3, len(nb["cells"])]))
    for c in targets:
        c.setdefault("metadata", {})["tags"] = value
    return _dumps(nb), f"tags = {value!r} on {len(targets)} cells"


def nbgrader(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    graded = [c for c in nb["cells"] if "nbgrader" in c.get("metadata", {})] or nb["cells"]
    cell = rng.choice(graded)
    meta = cell.setdefault("metadata", {})
    how = rng.choice(["whole", "grade_id", "locked", "solution", "schema", "copied id", "everything locked"])
    if how == "whole":
        meta["nbgrader"] = rng.choice([None, "yes", 3, [], ["grade_id"], {}, {"grade_id": {"a": 1}}])
        return _dumps(nb), f"metadata.nbgrader = {meta['nbgrader']!r}"
    grading = meta.setdefault("nbgrader", {})
    if how == "grade_id":
        grading["grade_id"] = rng.choice([5, None, [], "", " ", "../../etc/passwd", "/abs/x", "ex1\x00", "\udc80"])
    elif how == "locked":
        grading["locked"] = rng.choice(["yes", 1, None, "false", [True]])
    elif how == "solution":
        grading["solution"] = rng.choice([True, "true", 1, None, {}])
    elif how == "schema":
        grading["schema_version"] = rng.choice(["3", 99, None, -1])
    elif how == "copied id":  # two cells with one grade_id: an answer cell pasted twice, or a locked one
        other = rng.choice(graded)
        grading["grade_id"] = other.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    else:
        for c in nb["cells"]:
            if isinstance(c.get("metadata", {}).get("nbgrader"), dict):
                c["metadata"]["nbgrader"]["locked"] = True
    return _dumps(nb), f"nbgrader metadata: {how}"


ASSIGNMENTS = [
    "../../etc/passwd",
    "/abs/x",
    "..",
    ".",
    "",
    " ",
    "backprop_ninja/../backprop_ninja",
    "C:\\Windows\\x",
    "BACKPROP_NINJA",
    "backprop_ninja ",
    "backprop_ninja\x00",
    "lecture",
    "rubric",
    "activations_batchnorm",
    "leaky_abstractions",
    "backprop_ninja",
    "x" * 5000,
    "\udc80",
    "~/x",
    "assignments/backprop_ninja",
    "backprop_ninja.toml",
    "%s%s%n",
    5,
    None,
    ["backprop_ninja"],
    {"name": "backprop_ninja"},
    True,
]


def assignment(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    meta = nb.setdefault("metadata", {})
    how = rng.random()
    if how < 0.75:
        meta["grader"] = {"assignment": rng.choice(ASSIGNMENTS)}
        return _dumps(nb), f"metadata.grader.assignment = {meta['grader']['assignment']!r}"[:120]
    if how < 0.9:
        meta["grader"] = rng.choice(["backprop_ninja", ["backprop_ninja"], None, 0])
        return _dumps(nb), f"metadata.grader = {meta['grader']!r}"
    meta.pop("grader", None)  # no assignment named: read as a lecture notebook
    return _dumps(nb), "metadata.grader deleted"


def nesting(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    depth = rng.choice([50, 500, 990, 3000, 100_000])
    opener, closer = rng.choice([("[", "]"), ('{"a":', "}")])
    deep = opener * depth + "1" + closer * depth
    where = rng.choice(["metadata", "cell metadata", "output", "nbgrader", "top"])
    marker = '"__DEEP__"'
    if where == "metadata":
        nb["metadata"]["deep"] = "__DEEP__"
    elif where == "cell metadata":
        rng.choice(nb["cells"]).setdefault("metadata", {})["deep"] = "__DEEP__"
    elif where == "output":
        rng.choice(_code_cells(nb))["outputs"] = [
            {
                "output_type": "execute_result",
                "execution_count": 1,
                "metadata": {},
                "data": {"application/json": "__DEEP__"},
            }
        ]
    elif where == "nbgrader":
        cell = rng.choice(_answer_cells(nb))
        cell.setdefault("metadata", {})["nbgrader"] = "__DEEP__"
    else:
        nb["deep"] = "__DEEP__"
    return _dumps(nb).replace(marker.encode(), deep.encode(), 1), f"{depth} levels of {opener} in {where}"


def deep_code(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    depth = rng.choice([100, 199, 201, 1000, 20_000])
    code = rng.choice(
        [
            "x = " + "(" * depth + "1" + ")" * depth,
            "x = " + "[" * depth + "]" * depth,
            "x = " + "-" * depth + "1",
            "x = 1" + " + 1" * depth,
            "".join(" " * i + "if True:\n" for i in range(min(depth, 400))) + " " * min(depth, 400) + "pass",
            "x = " + "f'{" * min(depth, 300) + "1" + "}'" * min(depth, 300),
            "d_probs = " + "not " * depth + "None",
        ]
    )
    cell = rng.choice(_answer_cells(nb))
    cell["source"] = code + "\n" + _source(cell)
    return _dumps(nb), f"nested code ({len(code)} characters) at the top of an answer cell"


def huge_cell(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    size = rng.choice([10**5, 10**6, 4 * 10**6])
    body = rng.choice(
        [
            "# " + "x" * size,
            "".join(f"# line {i}\n" for i in range(size // 10)),
            "s = '" + "a" * size + "'",
            "x = [" + "1," * (size // 2) + "]",
        ]
    )
    cell = rng.choice(_answer_cells(nb) if rng.random() < 0.6 else nb["cells"])
    cell["source"] = _source(cell) + "\n" + body
    return _dumps(nb), f"{len(body)} characters added to a {cell['cell_type']} cell"


def huge_output(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    size = rng.choice([10**5, 10**6, 8 * 10**6])
    count = rng.choice([1, 1, 1000])
    output = rng.choice(
        [
            {"output_type": "stream", "name": "stdout", "text": "y" * (size // count)},
            {
                "output_type": "stream",
                "name": "stdout",
                "text": ["logits | exact: True | approximate: True | maxdiff: 0\n"] * (size // 60 // count),
            },
            {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0K" * (size // 8 // count)}},
            {"output_type": "error", "ename": "E", "evalue": "v" * (size // count), "traceback": ["t"] * 100},
        ]
    )
    cell = rng.choice(_code_cells(nb))
    cell["outputs"] = [output] * count
    cell["execution_count"] = 1
    return _dumps(nb), f"{count} outputs of about {size // count} bytes each"


def many_cells(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    count = rng.choice([1000, 3000, 10_000])
    how = rng.choice(["empty code", "markdown", "pass", "copies of a locked cell", "copies of an answer cell"])
    if how in ("empty code", "pass"):  # cells that run: (three runs each in a batch) 3,000 are thousands enough
        count = min(count, 3000)
    if how == "empty code":
        extra = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": ""}]
    elif how == "markdown":
        extra = [{"cell_type": "markdown", "metadata": {}, "source": "# Exercise 1\nnotes"}]
    elif how == "pass":
        extra = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": "pass"}]
    else:
        locked = [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("locked")]
        pick = rng.choice(locked if how == "copies of a locked cell" and locked else _answer_cells(nb))
        extra = [copy.deepcopy(pick)]
        if how == "copies of an answer cell":  # each copy runs its gradients again: a few hundred are enough
            count //= 30
    at = rng.randrange(len(nb["cells"]) + 1)
    cells = [copy.deepcopy(extra[0]) for _ in range(count)]
    for j, c in enumerate(cells):
        if "id" in c or nb.get("nbformat_minor", 0) >= 5:
            c["id"] = f"fuzz-{j}"
    nb["cells"][at:at] = cells
    return _dumps(nb), f"{count} cells ({how}) inserted at {at}"


def empty(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    data = rng.choice(
        [
            b"",
            b" ",
            b"\n\n",
            b"\x00",
            b"{}",
            b"[]",
            b"null",
            b'""',
            b"0",
            b"true",
            b"\xef\xbb\xbf",
            b'{"cells": []}',
            b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}',
            b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {"grader": {"assignment": "backprop_ninja"}},'
            b' "cells": []}',
        ]
    )
    return data, f"the file is {data[:40]!r}"


MAGIC = [
    b"",
    b"PK\x03\x04",
    b"\x89PNG\r\n\x1a\n",
    b"%PDF-1.7\n",
    b"\x7fELF",
    b"\x1f\x8b\x08",
    b"{",
    b'{"cells": [',
    b"\xfe\xff",
    b"\xff\xfe",
]


def binary(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    head = rng.choice(MAGIC)
    return head + rng.randbytes(rng.choice([1, 100, 10_000, 10**6])), f"random bytes after {head!r}"


ODD_TEXT = [
    "\x00",
    "\udc80",
    "\ud800\udc00",
    "\r",
    "\u202e",
    "\u200b",
    "\x0c",
    "\x1b[2J",
    "😀",
    "\ufeff",
    "\\",
    "%%bash\n",
    "%load_ext autoreload\n",
    "!rm -rf /\n",
    "\t",
    "d_probs = None\x00",
]


def odd_text(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    cell = rng.choice(_answer_cells(nb) if rng.random() < 0.6 else nb["cells"])
    text = _source(cell)
    pieces = rng.sample(ODD_TEXT, rng.choice([1, 3]))
    at = rng.randrange(len(text) + 1)
    cell["source"] = text[:at] + "".join(pieces) + text[at:]
    return _dumps(nb), f"{pieces!r} at character {at} of a {cell['cell_type']} cell"


def cell_type(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    cell = rng.choice(nb["cells"])
    how = rng.choice(["raw", "unknown", "markdown with outputs", "code without outputs", "attachments"])
    if how == "raw":
        cell["cell_type"] = "raw"
        cell.pop("outputs", None)
        cell.pop("execution_count", None)
    elif how == "unknown":
        cell["cell_type"] = rng.choice(["heading", "python", "", "CODE"])
    elif how == "markdown with outputs":
        cell["cell_type"] = "markdown"
    elif how == "code without outputs":
        cell["cell_type"] = "code"
        cell.pop("outputs", None)
    else:
        cell["attachments"] = rng.choice([{"a.png": {"image/png": "AAAA"}}, [], "x"])
    return _dumps(nb), f"a cell made {how}"


def stripped(rng: random.Random, raw: bytes, nb: dict) -> tuple[bytes, str]:
    """A copy that lost the grader's and nbgrader's metadata: read as the lecture's own notebook (or refused as no
    notebook of ours), then damaged once more where that reading is slow or recursive."""
    nb["metadata"].pop("grader", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("nbgrader", None)
    code = _code_cells(nb)
    extra = rng.choice(["nothing more", "blank lines", "spaces", "printouts", "deep code", "many edits"])
    if extra == "blank lines":
        nb["cells"].insert(
            rng.randrange(len(nb["cells"])),
            {"cell_type": "markdown", "metadata": {}, "source": rng.choice([" ", "#", ""]) + "\n" * 200_000},
        )
    elif extra == "spaces":
        cell = rng.choice(code)
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": " " * 10**6 + "x"}]
    elif extra == "printouts":
        cell = rng.choice(code)
        cell["outputs"] = [
            {
                "output_type": "stream",
                "name": "stdout",
                "text": "probs | exact:"
                + " " * 10**5
                + "|\n"
                + "logprobs | exact: True | approximate: True\n" * 20_000,
            }
        ]
    elif extra == "deep code":
        cell = rng.choice(code)
        cell["source"] = "x = 1" + " + 1" * rng.choice([500, 5000]) + "\n" + _source(cell)
    elif extra == "many edits":  # what the lecture's plan rewrites: .cuda() calls, files opened
        cell = rng.choice(code)
        cell["source"] = _source(cell) + "\n" + "t = torch.zeros(1).cuda()\nf = open('names.txt')\n" * 5_000
    return _dumps(nb), f"our metadata removed, then {extra}"


KINDS: dict[str, Damage] = {
    f.__name__: f
    for f in (
        cut,
        flip,
        encoding,
        wrong_type,
        missing_key,
        version,
        cell_ids,
        tags,
        nbgrader,
        assignment,
        nesting,
        deep_code,
        huge_cell,
        huge_output,
        many_cells,
        empty,
        binary,
        odd_text,
        cell_type,
        stripped,
    )
}


def case(index: int, seed: int = SEED) -> Case:
    """Case `index` of `seed`: the kinds take turns, so that every kind gets its share of any count."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = list(KINDS)[index % len(KINDS)]
    source = rng.choice(SOURCES)
    raw = source.read_bytes()
    data, what = KINDS[kind](rng, raw, json.loads(raw))
    args = ("--assignment", rng.choice(KNOWN)) if rng.random() < 0.2 else ()
    return Case(index, kind, source.name, what, data, args)


KNOWN = ("backprop_ninja", "activations_batchnorm", "leaky_abstractions")


def cases(count: int, seed: int = SEED) -> list[Case]:
    """The first `count` cases of `seed`."""
    return [case(i, seed) for i in range(count)]


# --- judging an answer --------------------------------------------------------------------------------


def problem(path: Path, code: object, out: str, err: str) -> str | None:
    """What is wrong with how `grader check --json` answered the damaged file at `path`, or None: a report on stdout
    (exit 0), or exactly one line on stderr that names the file (exit 1); never a traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("grader: warning:")]  # (the sandbox's)
    if "Traceback" in err:
        return f"a traceback: {err.strip().splitlines()[-1][:200]}"
    if code == 0:
        try:
            report = json.loads(out)
        except ValueError:
            return "exit 0 without a JSON report on stdout"
        if report.get("status") not in ("graded", "failed") or not isinstance(report.get("score"), float):
            return f"exit 0 with a report of status {report.get('status')!r}"
        return f"exit 0, but stderr says {lines[0][:200]!r}" if lines else None
    if code != 1:
        return f"exit code {code!r}"
    if len(lines) != 1:
        return f"exit 1 with {len(lines)} lines on stderr: {lines[:3]}"
    if not lines[0].startswith("grader: ") or str(path) not in lines[0]:
        return f"exit 1, but the line does not name the file: {lines[0][:200]!r}"
    return None if not out.strip() else "exit 1 with something on stdout"


class Hang(Exception):
    """A case took longer than `CASE_SECONDS`."""


def _watchdog(signum, frame):
    raise Hang(f"no answer within {CASE_SECONDS} s")


def _table(rows: dict[str, Counter]) -> str:
    """Cases per kind of damage and how each ended."""
    out = [f"{'damage':<12} {'cases':>5} {'report':>7} {'one line':>8} {'broken':>6} {'seconds':>8}"]
    for kind, n in rows.items():
        out.append(f"{kind:<12} {n['cases']:>5} {n['report']:>7} {n['line']:>8} {n['broken']:>6} {n['seconds']:>8.1f}")
    total = sum(rows.values(), Counter())
    out.append(
        f"{'total':<12} {total['cases']:>5} {total['report']:>7} {total['line']:>8} {total['broken']:>6} "
        f"{total['seconds']:>8.1f}"
    )
    return "\n".join(out)


class _Shared:
    """The session's warm pool, handed to `main()` in place of a pool of its own (which it would start and stop)."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def __call__(self, *args, **kwargs) -> _Shared:
        return self

    def __enter__(self):
        return self.pool

    def __exit__(self, *exc: object) -> None:
        pass


# --- the tests ------------------------------------------------------------------------------------------


def test_the_judge_tells_every_broken_answer_from_a_good_one(tmp_path):
    """The rules below are only as good as `problem` and the watchdog: each way of breaking the promise is caught."""
    path = tmp_path / "x.ipynb"
    report = json.dumps({"status": "graded", "score": 0.0})
    one_line = f"grader: {path}: not a Jupyter notebook (the file is empty): hand in the notebook again\n"
    assert problem(path, 0, report, "") is None and problem(path, 1, "", one_line) is None
    assert problem(path, 0, report, "grader: warning: notebooks run in the portable sandbox (...)\n") is None
    assert problem(path, 1, "", "Traceback (most recent call last):\n  ...\nKeyError: 'cells'\n").startswith(
        "a traceback"
    )
    assert problem(path, 1, "", one_line * 2).startswith("exit 1 with 2 lines")
    assert problem(path, 1, "", "grader: not a Jupyter notebook\n").startswith("exit 1, but the line does not name")
    assert problem(path, 2, "", one_line) == "exit code 2"
    assert problem(path, 0, "{", "") == "exit 0 without a JSON report on stdout"
    assert problem(path, 0, report, "/x/validator.py:434: DuplicateCellId: ...\n").startswith("exit 0, but stderr")
    previous = signal.signal(signal.SIGALRM, _watchdog)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Hang):
            time.sleep(5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_no_damaged_notebook_breaks_grader_check(request, pool, monkeypatch, capsys, tmp_path):
    """Every case through `grader check --json` as the console script runs it (`main()`), in this process with the
    session's warm pool: a few hundred cases in about a minute (CI: 1,000)."""
    from grader import cli, sandbox

    count = SLOW_CASES if request.config.getoption("--runslow") else FAST_CASES
    monkeypatch.setattr(sandbox, "Pool", _Shared(pool))
    # One run per notebook, not three: the damage is in the file, not in the parameters (the sample through the
    # console script and the batch below keep the hidden runs).
    no_hidden_runs = tmp_path / "no hidden runs.toml"
    no_hidden_runs.write_text("")
    rows: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    broken = []
    previous = signal.signal(signal.SIGALRM, _watchdog)
    try:
        for c in cases(count):
            path = tmp_path / f"case {c.index}.ipynb"
            path.write_bytes(c.data)
            started = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
            try:
                code: object = cli.main(
                    [
                        "check",
                        str(path),
                        "--json",
                        "--timeout",
                        RUN_TIMEOUT,
                        "--hidden-runs",
                        str(no_hidden_runs),
                        *c.args,
                    ]
                )
            except Hang as e:
                code = f"a hang ({e})"
            except SystemExit as e:
                code = e.code
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            out, err = capsys.readouterr()
            wrong = problem(path, code, out, err)
            row = rows[c.kind]
            row.update(
                cases=1,
                seconds=time.monotonic() - started,
                broken=wrong is not None,
                report=wrong is None and code == 0,
                line=wrong is None and code == 1,
            )
            if wrong:
                broken.append(
                    f"case {c.index} ({c.kind}, {c.source}, {c.what}{' ' + ' '.join(c.args) if c.args else ''})"
                    f": {wrong}"
                )
            path.unlink()
    finally:
        signal.signal(signal.SIGALRM, previous)
    with capsys.disabled():  # the count per kind of damage, shown without -s too
        print(f"\nfuzzer, seed {SEED}, {count} cases:\n{_table(rows)}")
    assert all(rows[kind]["cases"] for kind in KINDS)  # every kind had its turn
    assert not broken, (
        f"{len(broken)} of {count} damaged files broke the grader (reproduce one with "
        f"`python tests/test_fuzz.py CASE --out x.ipynb`):\n" + "\n".join(broken[:30])
    )


SAMPLE_KINDS = (
    "cut",
    "flip",
    "encoding",
    "wrong_type",
    "version",
    "assignment",
    "nesting",
    "empty",
    "binary",
    "stripped",
)


def test_a_sample_through_the_console_script(tmp_path):
    """Ten cases, one per kind above, through the real `grader` command with its hidden runs: exit code, one line,
    no traceback, within the time."""
    for kind in SAMPLE_KINDS:
        c = case(list(KINDS).index(kind))
        path = tmp_path / f"{kind}.ipynb"
        path.write_bytes(c.data)
        proc = subprocess.run(
            [*grader_command(), "check", str(path), "--json", *c.args],
            capture_output=True,
            text=True,
            timeout=CASE_SECONDS,
        )
        assert problem(path, proc.returncode, proc.stdout, proc.stderr) is None, (kind, c.what, proc.stderr[-2000:])


def test_grade_gives_a_row_with_a_reason_to_every_damaged_file_and_full_marks_to_the_honest(tmp_path):
    """`grader grade` on a folder of damaged notebooks and three honest copies of a full-marks one."""
    folder = tmp_path / "submitted"
    folder.mkdir()
    made = []
    # another seed than the check above; thousands of cells (three runs each here) are left to it
    for c in (c for c in cases(40, SEED + 1) if c.kind != "many_cells"):
        (folder / f"case{c.index}_{c.kind}.ipynb").write_bytes(c.data)
        made.append(f"case{c.index}_{c.kind}")
    for i in (1, 2, 3):
        shutil.copyfile(NOTEBOOKS / "full_marks.ipynb", folder / f"honest{i}.ipynb")
    proc = subprocess.run(
        [
            *grader_command(),
            "grade",
            str(folder),
            "--assignment",
            "backprop_ninja",
            "--out",
            str(tmp_path / "out"),
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    with open(tmp_path / "out" / "grades.csv", newline="") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert set(rows) == {*made, "honest1", "honest2", "honest3"}
    for i in (1, 2, 3):
        assert rows[f"honest{i}"]["status"] == "graded" and rows[f"honest{i}"]["score"] == "36", rows[f"honest{i}"]
    for student in made:
        row, report = rows[student], json.loads((tmp_path / "out" / "reports" / f"{student}.json").read_text())
        if row["status"] == "failed":  # no report of its runs: the reason is the row's
            assert row["error"].strip() and "\n" not in row["error"], row
        else:  # graded: every variable short of its points says why
            assert row["status"] == "graded" and not row["error"]
            assert all(v["message"] for v in report["variables"] if v["points"] < v["max_points"]), student
    counts = Counter(student.partition("_")[2] for student in made)
    print(
        f"\ngrader grade: {len(made)} damaged files ({dict(sorted(counts.items()))}) and 3 honest ones; "
        f"{sum(rows[s]['status'] == 'failed' for s in made)} failed with a reason, the rest graded"
    )


def test_control_characters_from_a_notebook_reach_no_terminal(pool, monkeypatch, capsys, tmp_path):
    """What a notebook says (an exception's message, a file name) is shown with its control characters escaped: the
    report's table, and the one line of a file that is no notebook."""
    import nbformat

    from grader import cli, sandbox

    monkeypatch.setattr(sandbox, "Pool", _Shared(pool))
    nb = nbformat.read(NOTEBOOKS / "full_marks.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex2")
    cell.source = "raise ValueError('\\x1b]0;pwned\\x07\\x1b[2J')\n" + cell.source
    path = tmp_path / "escapes.ipynb"
    nbformat.write(nb, path)
    assert cli.main(["check", str(path), "--hidden-runs", os.devnull]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "raised ValueError: \\x1b]0;pwned\\x07\\x1b[2J" in out and out.rstrip().endswith("Total: 35/36")
    named = tmp_path / "two\nlines\x1b[2J.ipynb"
    named.write_text("")
    assert cli.main(["check", str(named)]) == 1
    assert capsys.readouterr().err == (
        f"grader: {tmp_path}/two\\nlines\\x1b[2J.ipynb: not a Jupyter notebook (the "
        "file is empty): hand in the notebook again, saved in Jupyter\n"
    )


# --- the grader's own inputs ------------------------------------------------------------------------------


def _without(module: str, tmp_path: Path) -> dict[str, str]:
    """An environment in which `module` cannot be imported (as where its extra is not installed)."""
    site = tmp_path / f"without_{module}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None  # import {module} fails\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("grader: warning:")]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_grade_on_dask_without_dask_says_how_to_install_it(tmp_path):
    folder = tmp_path / "submitted"
    folder.mkdir()
    shutil.copyfile(NOTEBOOKS / "full_marks.ipynb", folder / "alice.ipynb")
    proc = subprocess.run(
        [
            *grader_command(),
            "grade",
            str(folder),
            "--assignment",
            "backprop_ninja",
            "--out",
            str(tmp_path / "out"),
            "--scheduler",
            "local:2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_without("dask", tmp_path),
    )
    assert proc.returncode == 1
    assert _one_line(proc) == "grader: --scheduler needs Dask: pip install 'backprop-grader[dask]'"


def test_gradebook_without_nbgrader_says_how_to_install_it(tmp_path):
    proc = subprocess.run(
        [*grader_command(), "gradebook", str(tmp_path), "backprop_ninja"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_without("nbgrader", tmp_path),
    )
    assert proc.returncode == 1
    assert "pip install 'backprop-grader[nbgrader]'" in _one_line(proc)


HIDDEN_RUNS = {  # a malformed --hidden-runs file -> what its one line must say
    "hidden_run = [\n": "not valid TOML",
    "hidden_run = 5\n": "[[hidden_run]] must be tables of parameter values",
    "[hidden_run]\nseed = 3\n": "[[hidden_run]] must be tables of parameter values",
    "[[hidden_run]]\nsneed = 3\n": "hidden run 1: backprop_ninja has no parameters ['sneed']",
    "[[hidden_run]]\nseed = 1\n[[hidden_run]]\nseed = 'three'\n": "hidden run 2: seed = 'three' is a string, but backprop_ninja's seed is a whole number",
    "[[hidden_run]]\nbatch_size = 2.5\n": "hidden run 1: batch_size = 2.5 is a number, but backprop_ninja's batch_size",
    "[[hidden_run]]\nn_hidden = [64]\n": "hidden run 1: n_hidden = [64] is not a number, a string or true/false",
    "[[hidden_run]]\nseed = inf\n": "hidden run 1: seed = inf is not a finite number",
    "[[hidden_run]]\ndata_path = '/etc/passwd'\n": "hidden run 1: data_path is the grader's to set",
    "[[hidden_run]]\nbatch_size = 0\n": "hidden run 1 (batch_size = 0): backprop_ninja's reference cells fail with these",
}


@pytest.mark.parametrize("content", list(HIDDEN_RUNS), ids=range(len(HIDDEN_RUNS)))
def test_a_malformed_hidden_runs_file_is_one_line_naming_the_field(content, pool, monkeypatch, capsys, tmp_path):
    from grader import cli, sandbox

    monkeypatch.setattr(sandbox, "Pool", _Shared(pool))
    runs = tmp_path / "runs.toml"
    runs.write_text(content)
    code = cli.main(["check", str(NOTEBOOKS / "full_marks.ipynb"), "--hidden-runs", str(runs)])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert HIDDEN_RUNS[content] in err
    assert "toml" not in HIDDEN_RUNS[content].lower() or str(runs) in err  # a file that cannot be read is named


def test_hidden_runs_of_another_encoding_name_the_file(capsys, tmp_path):
    from grader import cli

    runs = tmp_path / "runs.toml"
    runs.write_bytes("[[hidden_run]]\nseed = 3\n".encode("utf-16"))
    assert cli.main(["check", str(NOTEBOOKS / "full_marks.ipynb"), "--hidden-runs", str(runs)]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"grader: {runs}: cannot read hidden runs (not UTF-8 text: byte 0xff at offset 0; TOML files are UTF-8)\n"
    )


RUBRICS = [  # (where, a value put there or None for none, what the one error must say): changes to the shipped rubric
    ("tolerance", 1e-5, "[tolerance] must be a table"),
    ("variable", {"d_b1": 1e-6}, "[variable.d_b1] must be a table"),
    ("skip_cells", "autograd", "skip_cells must be a list of strings"),
    ("exercise", [], "the rubric needs [[exercise]] tables"),
    ("exercise", {"id": "ex1"}, "the rubric needs [[exercise]] tables"),
    ("exercise.0.variables", ["d_probs", 3], "exercise 'ex1': variables must be a list of names"),
    ("exercise.0.id", 1, "[[exercise]] 1: id must be a string"),
    ("exercise.3.training", "ex4_train", "exercise 'ex4': [exercise.training] must be a table"),
    ("credit", "partial", 'credit must be "local" or "chain"'),
    ("exercise.3.calls", ["first"], "malformed rubric in exercise 'ex4' (ValueError: invalid literal for int()"),
    ("exercise.3.forward", None, "malformed rubric in exercise 'ex4' (no 'forward')"),
]


@pytest.mark.parametrize("where, value, says", RUBRICS, ids=[w for w, _, _ in RUBRICS])
def test_a_malformed_rubric_is_one_error_naming_the_field(where, value, says):
    import tomllib

    from grader import rubric
    from grader.errors import RubricError

    path = ROOT / "assignments" / "backprop_ninja.toml"
    raw = tomllib.loads(path.read_text())
    node, *keys = [raw, *where.split(".")]
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is None:  # (TOML has no null: a key left out)
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    with pytest.raises(RubricError) as e:
        rubric.parse(raw, path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert says in str(e.value)


def test_usage_errors_exit_2(tmp_path, monkeypatch, capsys):
    from grader import cli

    notebook = str(NOTEBOOKS / "full_marks.ipynb")
    for argv in (
        ["check", notebook, "--sandbox", "nonesuch"],
        ["check", notebook, "--timeout", "nan"],
        ["check", notebook, "--memory", "1"],
        ["grade", notebook, "--assignment", "backprop_ninja"],
        ["grade", notebook, "--assignment", "backprop_ninja", "--out", str(tmp_path), "--jobs", "0"],
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
        assert "Traceback" not in capsys.readouterr().err
    monkeypatch.setenv("GRADER_SANDBOX", "nonesuch")
    assert cli.main(["check", notebook]) == 2
    assert capsys.readouterr().err == (
        "grader: GRADER_SANDBOX: 'nonesuch' is not a sandbox; choose one of auto, linux, portable\n"
    )


def main(argv: list[str] | None = None) -> None:
    """Write case I of a seed to a file, to try it by hand: `python tests/test_fuzz.py I [--seed S] [--out FILE]`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("index", type=int)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=None, help="default: case-I.ipynb here")
    args = parser.parse_args(argv)
    c = case(args.index, args.seed)
    out = Path(args.out or f"case-{c.index}.ipynb")
    out.write_bytes(c.data)
    print(f"{out}: {c.kind} of {c.source}: {c.what}; check it with: grader check {out} {' '.join(c.args)}".rstrip())


if __name__ == "__main__":
    main()
