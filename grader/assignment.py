"""Stage 0: what to grade. The one place that reads an assignment's files.

An `Assignment` holds everything particular to one assignment that the stages read: its rubric (parsed by
`grader.rubric`, with what it leaves out read from the notebooks by `grader.infer`), the released notebook
and its code cells by grade_id, the parameters it publishes, the data files its runs read, the
instructor's solution where this installation has one, and a digest of all of them. Where the files are
is `grader.course`'s business (a course folder, an assignment folder, the shipped assignments); a student's
copy of a release carries what `grader check` needs in its metadata (`grader.embedded`). An entry point (a
CLI command, the pytest plugin, a Dask task, a Gradescope run) loads its assignment here once and passes the
object down: plan, reference and score receive it, and no other module reads a rubric or a released notebook.

Guarantees:
- A name from a student's notebook is only looked up (in the course, then among the shipped assignments),
  never followed as a path.
- A rubric that names what its notebooks lack, or holds an unknown key, is a `RubricError` that says the
  assignment is broken, not the notebook being graded.
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

from grader import assets, infer, notebook
from grader import course as courses
from grader.course import Location
from grader.errors import BrokenAssignment, RubricError, UnknownAssignment, UsageError
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
    location: Location
    """Where its files are (`grader.course`): the hidden folders, the source folder of a course's."""
    raw: Mapping[str, object]
    """The rubric's values with what the notebooks decide filled in (what a release embeds for students)."""

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


def known(course: Path | None = None) -> list[str]:
    """Names of the assignments the grader can grade: the course's (if given), then the shipped ones."""
    return courses.known(course)


def name_of(nb: nbformat.NotebookNode, path: Path, course: Path | None = None) -> str:
    """The assignment named in the notebook's metadata, found in `course` or among the shipped ones, or raise
    `UnknownAssignment`. The name is the student's to edit: it is only ever looked up, never followed as a path."""
    name = notebook.claimed_assignment(nb)
    if not isinstance(name, str) or not name:
        raise UnknownAssignment(
            f"{path}: the notebook's metadata does not name an assignment (grader.assignment); "
            "was it made from one of the released notebooks? Pass --assignment NAME to say which"
        )
    # (the built-in rubric of lecture notebooks is chosen by recognising one, never by a name in the metadata)
    if name not in known(course) or name == LECTURE:
        also = "" if course else "; a course's assignment needs --course DIR"
        raise UnknownAssignment(
            f"{path}: the notebook's metadata names the assignment {notebook.cut(repr(name), 60)}, "
            "which the grader does not "
            f"have (known: {', '.join(known(course)) or 'none'}); pass --assignment NAME to grade it as one of them"
            f"{also}"
        )
    return name


def locate(name: str, course: Path | None = None) -> Location:
    """Where assignment `name` (or the built-in `lecture` one) is: the course's, else the shipped one."""
    if name == LECTURE:
        return Location(
            name=LECTURE,
            rubric=_LECTURE_RUBRIC,
            released=_LECTURE_RUBRIC.with_name("lecture.ipynb"),
            solution=None,
            data=assets.data_dir(),
            hidden_runs=None,
            hidden=(),
            origin="lecture",
        )
    return courses.locate(name, course)


def rubric_path(name: str, course: Path | None = None) -> Path:
    """The rubric file of assignment `name` (or of the built-in `lecture` one), or raise `UnknownAssignment`."""
    return locate(name, course).rubric


@dataclass(frozen=True)
class Files:
    """Where an assignment's files are, for a package that carries them elsewhere (the Gradescope autograder)."""

    rubric: Path
    """The rubric (TOML)."""
    released: Path
    """The released notebook."""
    solution: Path | None
    """The instructor's solution, where a values exercise reads it; None where none does."""
    data: tuple[Path, ...] = ()
    """The data files the rubric's [data] table names."""


def files(assignment: Assignment) -> Files:
    """The files of `assignment` that grading it elsewhere needs (never the solution unless an answer is
    checked against it)."""
    loc, rubric = assignment.location, assignment.rubric
    solution = loc.solution if rubric.reads_solution else None
    return Files(loc.rubric, loc.released, solution, tuple(assignment.data.values()))


def folder_files(assignment: Assignment, *, private: bool = True) -> dict[str, Path]:
    """The files of `assignment` as an assignment folder holds them (`grader.course.locate_dir`): relative path
    -> the file here. For a copy carried elsewhere (an autograder, a Dask worker, a student repository):
    `private` adds what only the instructor's grading may have (the solution where an answer is checked
    against it, the private hidden runs); a student repository's copy leaves it out."""
    found, loc = files(assignment), assignment.location
    out = {courses.RUBRIC: found.rubric, f"{assignment.name}.ipynb": found.released}
    out |= {path.name: path for path in found.data}
    if private and found.solution is not None:
        out[f"{courses.SOLUTION}/{assignment.name}.ipynb"] = found.solution
    if private and loc.hidden_runs is not None:
        out[courses.HIDDEN_RUNS] = loc.hidden_runs
    return out


def rubric_of(name: str, course: Path | None = None) -> Rubric:
    """The rubric of assignment `name`, for code that needs its variables' names and tolerances: the self-check
    in a student's kernel, and the integrations naming a course's columns. The lecture's is read alone."""
    if name == LECTURE:
        raw = _toml(_LECTURE_RUBRIC, _stamp(_LECTURE_RUBRIC))
        return parse(raw, _LECTURE_RUBRIC)
    return load(name, course).rubric


def load(name: str, course: Path | None = None) -> Assignment:
    """Assignment `name` (the course's, a shipped one, or `LECTURE`), with its released notebook, solution and
    data."""
    return load_at(locate(name, course))


def load_at(location: Location) -> Assignment:
    """The assignment whose files are at `location` (a memo keyed by every file's stamp: an edited file is read
    again)."""
    if not location.released.is_file():
        how = f"grader release {location.name} --course {location.source.parent.parent}" if location.source else ""
        raise RubricError(
            f"assignment {location.name} has no student notebook {location.released}"
            + (f": make it with `{how}`" if how else "")
        )
    paths = (location.rubric, location.released, location.solution, location.hidden_runs)
    return _load(location, tuple(_stamp(p) for p in paths if p is not None))


def data_files(location: Location) -> list[Path]:
    """The data files the rubric at `location` names (read from the rubric alone: the release may not exist)."""
    raw = _toml(location.rubric, _stamp(location.rubric))
    table = raw.get("data", {})
    if not isinstance(table, dict):
        return []
    return [location.data / Path(str(file)).name for file in table.values()]


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
def _toml(path: Path, stamp: tuple) -> dict:
    """The TOML file at `path`, parsed (a memo keyed by its stamp). A `RubricError` names what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RubricError(f"{path}: cannot read the rubric ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise RubricError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RubricError(f"{path}: not valid TOML ({e})") from None


def broken(location: Location, *problems: str) -> BrokenAssignment:
    """The error for an assignment its author must fix: it says the notebook being graded is not at fault, and
    how to list every problem."""
    course = f" --course {location.source.parent.parent}" if location.source else ""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return BrokenAssignment(
        f"assignment {location.name} is broken, not the notebook being graded ({location.rubric}: {problems[0]}"
        f"{more}); its author must fix it (`grader validate {location.name}{course}` lists every problem)",
        problems,
    )


@functools.lru_cache(maxsize=8)
def _load(location: Location, stamps: tuple) -> Assignment:
    """A memo of reading an assignment's files (tests and the library API load it per notebook): keyed by the
    stamps of all of them, so an edited file is read again."""
    raw = _toml(location.rubric, _stamp(location.rubric))
    released_bytes = _read(location.released, "released notebook")
    released = notebook.from_bytes(released_bytes, location.released)
    solution_path = location.solution
    solution_bytes = _read(solution_path, "solution") if solution_path and solution_path.is_file() else None
    solution = notebook.from_bytes(solution_bytes, solution_path) if solution_bytes and solution_path else None
    private = load_hidden_runs(location.hidden_runs) if location.hidden_runs else ()
    return build(location, raw, released, released_bytes, solution, solution_bytes, private)


def build(
    location: Location,
    raw: dict,
    released: nbformat.NotebookNode,
    released_bytes: bytes,
    solution: nbformat.NotebookNode | None,
    solution_bytes: bytes | None,
    private: tuple[dict[str, object], ...] = (),
    published: Mapping[str, object] | None = None,
) -> Assignment:
    """The `Assignment` of files already read: what the rubric leaves out read from the notebooks, the rubric
    checked against them (a `RubricError` that blames the assignment, not the student), the digests taken."""
    written = raw  # (the digest is of the rubric as written: what is inferred follows from the notebooks)
    raw, rubric = _parsed(location, raw, released, solution)
    published = dict(released_parameters(released) if published is None else published)
    problems = _problems(location, rubric, released, solution, published, private)
    if private:
        rubric = dataclasses.replace(rubric, hidden_runs=rubric.hidden_runs + tuple(private))
    if problems:
        raise broken(location, *problems)
    data = _data_files(location, rubric)
    cells = {gid: c.source for c in released.cells if c.cell_type == "code" and (gid := notebook.grade_id(c))}
    inputs = _inputs(written, private, released_bytes, solution_bytes, rubric, data)
    return Assignment(
        rubric=rubric,
        released=released,
        cells=MappingProxyType(cells),
        published=MappingProxyType(published),
        data=MappingProxyType(data),
        solution=solution,
        inputs=MappingProxyType(inputs),
        digest=value_digest(inputs),
        location=location,
        raw=MappingProxyType(raw),
    )


def _parsed(
    location: Location, raw: dict, released: nbformat.NotebookNode, solution: nbformat.NotebookNode | None
) -> tuple[dict, Rubric]:
    """The raw rubric (with its name, and what it leaves out read from the notebooks) and the `Rubric` parsed from
    it: a course's or a folder's broken rubric is the assignment's error (`BrokenAssignment`), a shipped one's
    `RubricError` is raised as it is."""
    if location.origin in ("course", "folder", "embedded"):
        raw = {"assignment": location.name, **raw}
        if raw["assignment"] != location.name:
            raise broken(location, f"assignment = {raw['assignment']!r}, but its folder is {location.name!r}")
    own_files = location.origin in ("shipped", "lecture")  # (the notebook the rubric names, beside it)
    if location.origin != "lecture":  # (the lecture's notebook is not an nbgrader one: nothing to read from it)
        raw = infer.defaults(raw, released, solution)
    try:
        return raw, parse(raw, location.rubric, None if own_files else location.released)
    except RubricError as e:
        if own_files:
            raise
        raise broken(location, str(e).removeprefix(f"{location.rubric}: ")) from None


def _problems(
    location: Location,
    rubric: Rubric,
    released: nbformat.NotebookNode,
    solution: nbformat.NotebookNode | None,
    published: dict[str, object],
    private: tuple[dict[str, object], ...],
) -> list[str]:
    """What the rubric and the private hidden runs name that the notebooks do not have."""
    problems = infer.problems(rubric, released, solution, published) if location.origin != "lecture" else []
    for run, values in enumerate(private, start=1):  # (named by their own file: they are not the rubric's)
        problems += [
            f"{location.hidden_runs}: hidden run {run}: {key!r} is not a parameter (the parameters: "
            f"{', '.join(published)})"
            for key in values
            if key not in published
        ]
    return problems


def _data_files(location: Location, rubric: Rubric) -> dict[str, Path]:
    """The rubric's data files, each by its key, in the assignment's data folder."""
    data = {}
    for key, file in rubric.data.items():
        if not courses.NAME.fullmatch(Path(file).stem) or Path(file).name != file:
            raise broken(location, f"[data] {key} = {file!r}: a data file is named by its file name alone")
        data[key] = location.data / file
    return data


def _inputs(
    written: dict,
    private: tuple[dict[str, object], ...],
    released_bytes: bytes,
    solution_bytes: bytes | None,
    rubric: Rubric,
    data: dict[str, Path],
) -> dict[str, str]:
    """The digests of what grades a submission: the rubric as written (with the private hidden runs), the
    released notebook, the solution where the rubric reads it, the data files."""
    data_digest = hashlib.sha256()
    for key, path in sorted(data.items()):
        data_digest.update(f"{key}={path.name}\0".encode() + _read(path, f"data file for {key}"))
    return {
        "rubric": value_digest([written, list(private)]) if private else value_digest(written),
        "released": _sha256(released_bytes),
        "solution": _sha256(solution_bytes) if rubric.reads_solution and solution_bytes is not None else "",
        "data": data_digest.hexdigest(),
    }


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
