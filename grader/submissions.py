"""Find a class's submissions: one notebook per student, from files, folders, nbgrader's layout and LMS zips.

`discover` names each notebook's student (the nbgrader folder, the name field of a Canvas bulk download,
or the file's stem), makes that name safe as a file name on every platform, tells apart two students of
the same name by their Canvas user ids, and says in one sentence each what it could not use (a duplicate,
an input with no notebook, a zip that cannot be unpacked). It reads the files and runs nothing: no
student code is run here, and a zip is unpacked only into the scratch folder it is given, within a size
cap.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from grader.errors import GraderError

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


# Canvas: name_[LATE_]userid_subid_file
_LMS = re.compile(r"^(?P<student>[A-Za-z0-9-]+)_(?P<late>LATE_)?(?P<user>\d+)_\d+_")


def _student_of(path: Path, root: Path, assignment: str) -> str:
    """The student a notebook found under `root` belongs to: its nbgrader folder, its Canvas name, or its stem."""
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
            if (
                info.is_dir()
                or name.suffix != ".ipynb"
                or name.is_absolute()
                or ".." in name.parts
                or "__MACOSX" in name.parts
                or ".ipynb_checkpoints" in name.parts
            ):
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
    """The notebooks anywhere under `folder`, without Jupyter's checkpoint copies."""
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
            problems.append(
                f"{student}: {len(paths)} notebooks ({', '.join(str(p) for p, _ in paths)}); graded {paths[0][0]}"
            )
        path, root = paths[0]
        canvas_id, late = _canvas_of(path, root, assignment)
        submissions.append(Submission(student, path, hashlib.sha256(path.read_bytes()).hexdigest(), canvas_id, late))
    return Found(tuple(submissions), tuple(problems), tuple(dict.fromkeys(roots)))
