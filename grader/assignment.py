"""Stage 0: what to grade. The one place that reads an assignment's files.

An `Assignment` holds everything particular to one assignment that the stages read: its rubric (a
TOML file beside the released notebook, parsed by `grader.rubric`), the released notebook and its code
cells by grade_id, the parameters it publishes, the data files its runs read, the instructor's solution
where this installation has one, and a digest of all of them. An entry point (a CLI command, the pytest
plugin, a Dask task, a Gradescope run) loads its assignment here once and passes the object down: plan,
reference and score receive it, and no other module reads a rubric or a released notebook.

Guarantees:
- Only assignments shipped with the grader are loaded by name: the name comes from a student's notebook.
- An `Assignment` is never changed after loading (the released notebook included: the stages only read it).
- Two assignments are equal when their digests are: the reference module's memos, keyed by assignment,
  are shared by every submission of a batch and start afresh when any file changes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import nbformat

from grader import assets, notebook
from grader.errors import RubricError, UnknownAssignment, UsageError
from grader.rubric import Rubric, hidden_runs, parse

LECTURE = "lecture"
"""The built-in rubric for the lecture's own notebook (see `grader.lecture`); not an assignment of the course."""

_LECTURE_RUBRIC = Path(__file__).resolve().parent / "lecture" / "data" / "lecture.toml"


@dataclass(frozen=True, eq=False)
class Assignment:
    """One assignment, as every stage of grading reads it."""

    rubric: Rubric
    """What to grade: cells, variables, points, tolerances, limits."""
    released: nbformat.NotebookNode
    """The released (student) notebook: the source of locked cells and of the reference code. Read only."""
    cells: Mapping[str, str]
    """grade_id -> source of each code cell of the released notebook that has one."""
    published: Mapping[str, object]
    """The default values of the released notebook's `parameters` cell."""
    data: Mapping[str, Path]
    """Parameter name -> the grader's copy of the data file the rubric points that parameter at."""
    solution: nbformat.NotebookNode | None
    """The instructor's solution notebook where this installation has it (a source checkout, an autograder
    package); None otherwise (a student's install never has it)."""
    inputs: Mapping[str, str]
    """A sha256 per input that decides a grade: `rubric` (its values, not its comments), `released`, `solution`
    (only where a values exercise reads it, else empty) and `data`."""
    digest: str
    """A sha256 of `inputs`: equal digests, equal assignments."""

    @property
    def name(self) -> str:
        """The assignment's name, as notebook metadata names it (`grader.assignment`)."""
        return self.rubric.assignment

    def defaults(self) -> dict[str, object]:
        """The parameters of the notebook's own run: the published ones, the rubric's grading ones, and each data
        parameter at the grader's copy (as the reference reads it)."""
        return dict(self.published) | (self.rubric.grading_parameters or {}) | {k: str(p) for k, p in self.data.items()}

    def with_rubric(self, rubric: Rubric) -> Assignment:
        """The same files graded by a rubric that differs only in the names of its variables (a lecture notebook's
        own gradient names): the digest, and so every memo of the reference, stays the same."""
        if [(ex.id, [v.of for v in ex.variables]) for ex in rubric.exercises] != [
            (ex.id, [v.of for v in ex.variables]) for ex in self.rubric.exercises
        ]:
            raise ValueError("with_rubric: the rubrics grade different tensors")  # (the grader's own bug)
        return dataclasses.replace(self, rubric=rubric)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Assignment) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def known() -> list[str]:
    """Names of the assignments the grader can grade."""
    return sorted(p.stem for p in assets.assignments_dir().glob("*.toml"))


def name_of(nb: nbformat.NotebookNode, path: Path) -> str:
    """The assignment named in the notebook's metadata, or raise `UnknownAssignment`."""
    name = notebook.claimed_assignment(nb)
    if not isinstance(name, str) or not name:
        raise UnknownAssignment(
            f"{path}: the notebook's metadata does not name an assignment (grader.assignment); "
            "was it made from one of the released notebooks? Pass --assignment NAME to say which"
        )
    # Only the names of shipped assignments: the name is the student's to edit (a path, or the built-in
    # rubric of lecture notebooks, which is chosen by recognising one, never by a name in the metadata).
    if name not in known():
        raise UnknownAssignment(
            f"{path}: the notebook's metadata names the assignment {notebook.cut(repr(name), 60)}, "
            "which the grader does not "
            f"have (known: {', '.join(known()) or 'none'}); pass --assignment NAME to grade it as one of them"
        )
    return name


def rubric_path(name: str) -> Path:
    """The rubric file of assignment `name` (or of the built-in `lecture` one), or raise `UnknownAssignment`."""
    if name == LECTURE:
        return _LECTURE_RUBRIC
    # Only names of rubrics shipped with the grader: the name comes from a student's notebook metadata.
    if name not in known():
        raise UnknownAssignment(f"unknown assignment {name!r} (known: {', '.join(known()) or 'none'})")
    return assets.assignments_dir() / f"{name}.toml"


@dataclass(frozen=True)
class Files:
    """Where an assignment's files are, for a package that carries them elsewhere (the Gradescope autograder)."""

    rubric: Path
    """The rubric (TOML)."""
    released: Path
    """The released notebook."""
    solution: Path | None
    """The instructor's solution, where a values exercise reads it; None where none does."""


def files(name: str) -> Files:
    """The files of assignment `name` (one of `known()`), or raise `UnknownAssignment`."""
    toml = rubric_path(name)
    rubric = _rubric(toml, _stamp(toml))[0]
    solution = assets.solutions_dir() / rubric.released.name if rubric.reads_solution else None
    return Files(toml, rubric.released, solution)


def rubric_of(name: str) -> Rubric:
    """Only the rubric of assignment `name`, for code that needs its variables' names and tolerances and nothing
    else: the self-check in a student's kernel, and the integrations naming a course's columns."""
    path = rubric_path(name)
    return _rubric(path, _stamp(path))[0]


def load(name: str) -> Assignment:
    """Assignment `name` (one of `known()`, or `LECTURE`), with its released notebook, solution and data."""
    toml = rubric_path(name)
    rubric = _rubric(toml, _stamp(toml))[0]
    files = (
        rubric.released,
        assets.solutions_dir() / rubric.released.name,
        *(assets.data_dir() / file for file in rubric.data.values()),
    )
    return _load(toml, _stamp(toml), tuple(_stamp(p) for p in files))


def lecture() -> Assignment:
    """The built-in assignment that lecture notebooks are graded by (variables named as the lecture names them)."""
    return load(LECTURE)


def _stamp(path: Path) -> tuple[str, int, int]:
    """What tells a changed file from the one read before: path, modification time and size (0s if absent)."""
    try:
        st = path.stat()
    except OSError:
        return str(path), 0, 0
    return str(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=16)
def _rubric(path: Path, stamp: tuple) -> tuple[Rubric, str]:
    """The rubric in the file at `path`, and a digest of its values (not of its comments). A memo of reading and
    parsing it (a batch grades every submission by the same file), keyed by the file's stamp."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RubricError(f"{path}: cannot read the rubric ({e.strerror or e})") from None
    raw = tomllib.loads(text)
    digest = value_digest(raw)  # (before parse, which may keep parts of `raw`)
    return parse(raw, path), digest


@functools.lru_cache(maxsize=8)
def _load(toml: Path, stamp: tuple, stamps: tuple) -> Assignment:
    """A memo of reading an assignment's files (tests and the library API load it per notebook): keyed by the
    stamps of all of them, so an edited file is read again."""
    rubric, rubric_digest = _rubric(toml, stamp)
    solution_path = assets.solutions_dir() / rubric.released.name
    data = {key: assets.data_dir() / file for key, file in rubric.data.items()}
    released_bytes = _read(rubric.released, "released notebook")
    released = notebook.from_bytes(released_bytes, rubric.released)
    cells = {notebook.grade_id(c): c.source for c in released.cells if c.cell_type == "code" and notebook.grade_id(c)}
    solution_bytes = _read(solution_path, "solution") if solution_path.is_file() else None
    solution = notebook.from_bytes(solution_bytes, solution_path) if solution_bytes is not None else None
    data_digest = hashlib.sha256()
    for key, path in sorted(data.items()):
        data_digest.update(f"{key}={path.name}\0".encode() + _read(path, f"data file for {key}"))
    inputs = {
        "rubric": rubric_digest,
        "released": _sha256(released_bytes),
        "solution": _sha256(solution_bytes) if rubric.reads_solution and solution_bytes is not None else "",
        "data": data_digest.hexdigest(),
    }
    return Assignment(
        rubric=rubric,
        released=released,
        cells=MappingProxyType(cells),
        published=MappingProxyType(released_parameters(released)),
        data=MappingProxyType(data),
        solution=solution,
        inputs=MappingProxyType(inputs),
        digest=value_digest(inputs),
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise RubricError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def value_digest(value: object) -> str:
    """A sha256 of `value` that is the same for the same values, whatever the order of keys or the comments of
    the file they came from."""
    return _sha256(json.dumps(value, sort_keys=True, default=repr).encode("utf-8"))


def released_parameters(released: nbformat.NotebookNode) -> dict[str, object]:
    """The default values of a released notebook's `parameters` cell."""
    ns: dict[str, object] = {}
    exec(notebook.parameters_source(released), ns)  # trusted: our own released notebook
    return {k: v for k, v in ns.items() if not k.startswith("__")}


def load_hidden_runs(path: Path) -> tuple[dict[str, object], ...]:
    """An instructor's own hidden runs, from a TOML file of `[[hidden_run]]` tables kept out of the release."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:  # the command line names a file that is not there: a usage error
        raise UsageError(f"{path}: cannot read hidden runs ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise RubricError(
            f"{path}: cannot read hidden runs (not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}; TOML files are UTF-8)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise RubricError(f"{path}: not valid TOML ({e})") from None
    return hidden_runs(raw, Path(path))
