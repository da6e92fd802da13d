"""The released notebooks in a kernel where the grader package is not installed (a fresh Colab runtime):
each cell that imports it prints one line saying how to install it, never a traceback.

The notebooks run in a real Jupyter kernel (nbclient) whose first cell makes `import grader` fail as it
does where the package is absent; a last cell checks that it still does.
"""

from __future__ import annotations

import ast
import tomllib

import nbformat
import pytest
from conftest import ROOT, answered
from IPython.core.inputtransformer2 import TransformerManager

from grader import assignment as assignments
from grader import notebook

pytestmark = pytest.mark.portable

ALL = assignments.known()
NAMES_TXT = ROOT / "data" / "names.txt"
DISTRIBUTION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["name"]

# `None` in sys.modules makes every `import grader` and `from grader import ...` raise ModuleNotFoundError
HIDE_GRADER = "import sys\nsys.modules['grader'] = None"
PROBE = "import grader"


def _imports_grader(cell) -> bool:
    tree = ast.parse(TransformerManager().transform_cell(cell.source))  # magics as IPython runs them
    return any(
        (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "grader" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "grader")
        for node in ast.walk(tree)
    )


def _has_data_path(nb) -> bool:
    ns: dict = {}
    exec(notebook.parameters_source(nb), ns)  # trusted: our own released notebook
    return "data_path" in ns


def _run_without_grader(nb, cwd) -> list:
    """Run `nb`'s cells (its `skip-execution` ones excepted) in a fresh kernel that cannot import grader;
    return the cells that import it, with their outputs."""
    from nbclient import NotebookClient

    users = [c for c in nb.cells if c.cell_type == "code" and _imports_grader(c)]
    probe = nbformat.v4.new_code_cell(PROBE)
    nb.cells = [nbformat.v4.new_code_cell(HIDE_GRADER), *nb.cells, probe]
    NotebookClient(
        nb, timeout=300, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    errors = [o for o in probe.outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["ModuleNotFoundError"], (
        "the kernel could import grader: the test proves nothing"
    )
    return users


def _text(cell, stream: str) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == stream)


def _install_line(cell) -> str:
    """The one line the cell printed, after checking that it printed nothing else, nothing to stderr, and
    raised nothing."""
    errors = [f"{o.ename}: {o.evalue}" for o in cell.outputs if o.output_type == "error"]
    assert errors == [], f"{notebook.grade_id(cell)}: {errors}"
    assert _text(cell, "stderr") == "", notebook.grade_id(cell)
    lines = _text(cell, "stdout").splitlines()
    assert len(lines) == 1 and f"%pip install {DISTRIBUTION}" in lines[0], (notebook.grade_id(cell), lines)
    return lines[0]


@pytest.fixture(scope="module")
def with_own_data(tmp_path_factory) -> dict[str, list]:
    """Each release, with the solution's answers typed in and `data_path` set to the student's own copy of
    names.txt (the parameters are injected after the parameters cell, as papermill does): the cells that
    import grader, run."""
    out = {}
    for name in ALL:
        nb = answered(name)
        if _has_data_path(nb):
            at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
            nb.cells.insert(at + 1, nbformat.v4.new_code_cell(f"data_path = {str(NAMES_TXT)!r}"))
        out[name] = _run_without_grader(nb, tmp_path_factory.mktemp(name))
    return out


@pytest.mark.parametrize("name", ALL)
def test_every_test_cell_is_among_the_cells_checked(with_own_data, name):
    checked = {notebook.grade_id(c) for c in with_own_data[name]}
    tests = {ex.test_cell for ex in assignments.rubric_of(name).exercises}
    assert tests and tests <= checked


@pytest.mark.parametrize("name", ALL)
def test_a_check_cell_says_how_to_install_the_grader_and_scores_nothing(with_own_data, name):
    setup = set(assignments.rubric_of(name).setup_cells)
    for cell in with_own_data[name]:
        if notebook.grade_id(cell) in setup:
            continue
        _install_line(cell)
        results = [o.data["text/plain"] for o in cell.outputs if o.output_type == "execute_result"]
        assert results in ([], ["0"]), (notebook.grade_id(cell), results)  # nothing was checked: no points


READS_NAMES = [n for n in ALL if _has_data_path(nbformat.read(ROOT / "assignments" / f"{n}.ipynb", as_version=4))]


@pytest.mark.parametrize("name", READS_NAMES)
def test_the_setup_reads_your_own_names_txt_without_the_grader(with_own_data, name):
    setup = [c for c in with_own_data[name] if notebook.grade_id(c) in assignments.rubric_of(name).setup_cells]
    assert len(setup) == 1
    assert [o.output_type for o in setup[0].outputs] == ["stream"]
    assert _text(setup[0], "stdout").startswith("32469 names, vocabulary of 27;")


@pytest.mark.parametrize("name", READS_NAMES)
def test_the_setup_without_the_grader_or_a_data_path_says_how_to_install_it(with_own_data, tmp_path, name):
    nb = nbformat.read(ROOT / "assignments" / f"{name}.ipynb", as_version=4)
    setup = assignments.rubric_of(name).setup_cells
    nb.cells = nb.cells[: 1 + max(i for i, c in enumerate(nb.cells) if notebook.grade_id(c) in setup)]
    users = _run_without_grader(nb, tmp_path)
    assert [notebook.grade_id(c) for c in users] == list(setup)
    check_cell = next(c for c in with_own_data[name] if notebook.grade_id(c) not in setup)
    assert _install_line(users[0]) == _install_line(check_cell)  # the same words as the check cells


def test_one_wording_everywhere(with_own_data):
    setup = {name: set(assignments.rubric_of(name).setup_cells) for name in ALL}
    lines = {
        _install_line(c)
        for name, cells in with_own_data.items()
        for c in cells
        if notebook.grade_id(c) not in setup[name]
    }
    assert len(lines) == 1, lines
