"""Stage 1: load a submission.

Reads a notebook with nbformat, checks it the way a hostile file needs (size, depth, encoding, schema), and
finds cells by metadata only (nbgrader `grade_id`, the papermill `parameters` tag), never by the text of
their source. `grader.plan` turns what is found here into the run a child executes.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import nbformat
import nbformat.warnings

from grader.errors import NotANotebook


def read(path: Path) -> nbformat.NotebookNode:
    """Read and validate a notebook file, or raise `NotANotebook` saying what is wrong with it and where.

    Any bytes at all end here or in a notebook: the checks before nbformat's own are those its reading
    assumes (text, JSON, an object, a format number, cells of a known type) and cannot put in words.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotANotebook(f"{path}: no such file") from None
    except IsADirectoryError:
        raise NotANotebook(f"{path}: is a directory, not a notebook") from None
    except OSError as e:
        raise NotANotebook(f"{path}: cannot be read ({e.strerror or e})") from None
    return from_bytes(data, path)


def from_bytes(data: bytes, path: Path) -> nbformat.NotebookNode:
    """`read` of a file's bytes already read (`path` names it in messages)."""
    raw = _json(path, _text(path, data))
    major = _format(path, raw)
    if major == 4:
        _cells(path, raw.get("cells"))
    try:
        with _quiet_ids():
            if major == 4:  # checked before its lines are joined: the schema's message names the place in the file
                nb = nbformat.from_dict(raw)
                nbformat.validate(nb)
                nb = nbformat.versions[4].to_notebook_json(nb)
            else:
                nb = nbformat.convert(
                    nbformat.versions[major].to_notebook_json(raw, minor=raw.get("nbformat_minor", 0)), 4
                )
                nbformat.validate(nb)
    except nbformat.ValidationError as e:
        what = " ".join(str(getattr(e, "message", None) or e).split())
        raise _broken(path, f"{_where(getattr(e, 'absolute_path', ()))}: {cut(what)}") from None
    except RecursionError:
        raise _broken(path, "its JSON is nested too deeply") from None
    except Exception as e:  # nbformat's conversion of formats 1-3 assumes their schema: any type can come out
        what = "nbformat cannot read it" if major == 4 else f"a format {major} notebook that cannot be converted to 4"
        raise _broken(path, f"{what} ({type(e).__name__}: {cut(str(e))})") from None
    for number, cell in enumerate(nb.cells, start=1):
        if cell.cell_type == "code" and len(cell.source) > MAX_CODE:
            raise NotANotebook(
                f"{path}: cell {number} holds {len(cell.source):,} characters of code, more than the "
                f"grader reads in one cell ({MAX_CODE:,}): was something pasted into it by mistake?"
            )
    return nb


FIX = "save it again from Jupyter, or download it again (File > Download)"
"""What a student can do about a file that is not a notebook, whatever is wrong with it."""

_BINARY = (
    (b"PK\x03\x04", "a zip archive: unzip it and hand in the .ipynb file inside"),
    (b"%PDF", "a PDF document: hand in the .ipynb file itself, not an export of it"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xd0\xcf\x11\xe0", "a Microsoft Office document"),
)
MAX_CODE = 2 * 2**20
"""Longest code cell read, in characters: four times the longest seen in a submission (a run's printed tensors
copied into a cell, half a MiB), and scanned and compiled in seconds. (A cell of many megabytes takes minutes, in
the grader's own process, where no timeout ends it.)"""
MAX_DEPTH = 100
"""Deepest nesting of a notebook's JSON read: Jupyter's own is about 6 deep and output data rarely tens; refusing
deeper input here, before any recursive code sees it, makes the answer the same on every stack."""


def _broken(path: Path, what: str) -> NotANotebook:
    return NotANotebook(f"{path}: not a Jupyter notebook ({what}): {FIX}")


def cut(text: str, limit: int = 160) -> str:
    """`text` on one line and at most about `limit` characters (a schema error quotes the whole bad value)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _text(path: Path, data: bytes) -> str:
    """The file's text: UTF-8 as Jupyter writes it, with a byte order mark or in UTF-16/32 too (as JSON allows)."""
    if not data.strip():
        raise NotANotebook(
            f"{path}: not a Jupyter notebook (the file is empty): hand in the notebook again, saved in Jupyter"
        )
    for magic, what in _BINARY:
        if data.startswith(magic):
            raise NotANotebook(f"{path}: not a Jupyter notebook (it is {what})")
    encoding = json.detect_encoding(data)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        name = "UTF-8" if encoding.startswith("utf-8") else encoding.upper()
        raise _broken(
            path,
            f"not {name} text, byte 0x{data[e.start]:02x} at offset {e.start}: was it saved by another "
            "program, in another encoding?",
        ) from None


def _json(path: Path, text: str) -> dict:
    """The parsed JSON object, or why the text is none."""
    try:
        raw = json.loads(text)
    except RecursionError:
        raise _broken(path, f"its JSON is nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise _broken(path, f"its JSON ends in the middle, at line {e.lineno}: the file was cut short") from None
        raise _broken(path, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except ValueError as e:  # e.g. a number of more digits than Python converts
        raise _broken(path, f"invalid JSON: {cut(str(e))}") from None
    if not isinstance(raw, dict):
        raise _broken(path, f"its JSON is {_kind(raw)}, not the object a notebook is")
    if _depth(raw) > MAX_DEPTH:
        raise _broken(path, f"its JSON is nested more than {MAX_DEPTH} levels deep")
    return raw


def _kind(value: object) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "true or false",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _depth(value: dict | list) -> int:
    """How deep `value` nests (without recursion), counting up to just past `MAX_DEPTH`."""
    deepest, todo = 0, [(value, 1)]
    while todo and deepest <= MAX_DEPTH:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        todo += [(c, depth + 1) for c in children if isinstance(c, (dict, list))]
    return deepest


def _format(path: Path, raw: dict) -> int:
    """The notebook format's major version, one nbformat reads (1-4), or why there is none."""
    if "nbformat" not in raw:
        raise _broken(path, "no nbformat key: every notebook's JSON names its format")
    major, minor = raw["nbformat"], raw.get("nbformat_minor", 0)
    if type(major) is not int or major not in nbformat.versions:
        raise _broken(
            path, f"nbformat is {cut(repr(major), 40)}, not 4: Jupyter writes format 4 (and the grader converts 1-3)"
        )
    if major in (2, 3) and not isinstance(raw.get("worksheets"), list):
        raise _broken(path, f"nbformat is {major}, but the file has no worksheets, as a format {major} notebook has")
    if type(minor) is not int or minor < 0:
        raise _broken(path, f"nbformat_minor is {cut(repr(minor), 40)}, not a whole number")
    return major


CELL_TYPES = ("code", "markdown", "raw")


def _cells(path: Path, cells: object) -> None:
    """What nbformat's validation assumes of format 4 cells before it can say what else is wrong with them."""
    if cells is None:
        raise _broken(path, "no cells key: every notebook's JSON lists its cells")
    if not isinstance(cells, list):
        raise _broken(path, f"cells is {_kind(cells)}, not a list")
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict):
            raise _broken(path, f"cell {number} is {_kind(cell)}, not an object")
        if cell.get("cell_type") not in CELL_TYPES:
            raise _broken(
                path,
                f"cell {number} has cell_type {cut(repr(cell.get('cell_type')), 40)}, not one of "
                f"{', '.join(CELL_TYPES)}",
            )
        if "id" in cell and not isinstance(cell["id"], str):
            raise _broken(path, f"cell {number} has the id {cut(repr(cell['id']), 40)}, not a string")


def _where(parts: Iterable[object]) -> str:
    """A schema error's place, as `cell 3, metadata.tags`."""
    parts = list(parts)
    head = ""
    if len(parts) >= 2 and parts[0] == "cells" and isinstance(parts[1], int):
        head, parts = f"cell {parts[1] + 1}", parts[2:]
    rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return ", ".join(x for x in (head, rest) if x) or "the notebook"


_QUIET = threading.Lock()


@contextlib.contextmanager
def _quiet_ids() -> Iterator[None]:
    """nbformat replaces missing and repeated cell ids with a warning each. The grader finds cells by grade_id and
    never writes the notebook back: nothing to tell anyone. (Warning filters are process-wide: one read at a time.)"""
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore", nbformat.warnings.DuplicateCellId)
        warnings.simplefilter("ignore", nbformat.warnings.MissingIDFieldWarning)
        yield


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def claimed_assignment(nb: nbformat.NotebookNode) -> object:
    """What the notebook's metadata gives as its assignment's name (`grader.assignment`): anything at all, or None;
    the student can edit it."""
    return _dict(nb.metadata.get("grader")).get("assignment")


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    return _dict(_dict(cell.get("metadata")).get("nbgrader"))


def grade_id(cell: nbformat.NotebookNode) -> str | None:
    """The cell's nbgrader grade_id, if it has one."""
    gid = _nbgrader(cell).get("grade_id")
    return gid if isinstance(gid, str) and gid else None


def is_locked(cell: nbformat.NotebookNode) -> bool:
    """Whether nbgrader marks the cell read-only."""
    return _nbgrader(cell).get("locked") is True


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """Whether nbgrader marks the cell as an answer cell."""
    return _nbgrader(cell).get("solution") is True


def has_tag(cell: nbformat.NotebookNode, tag: str) -> bool:
    """Whether the cell carries the given nbformat tag."""
    tags = _dict(cell.get("metadata")).get("tags", [])
    return isinstance(tags, list) and tag in tags


def parameters_source(nb: nbformat.NotebookNode) -> str:
    """Source of the cell tagged `parameters` (empty if there is none)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and has_tag(cell, "parameters"):
            return cell.source
    return ""
