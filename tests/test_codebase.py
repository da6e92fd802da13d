"""Issue 28: rules of the codebase that a reviewer would otherwise check by hand."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from grader import assignment as assignments

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "grader"


def _modules() -> dict[str, Path]:
    """`grader.reference.steps` -> its file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports, anywhere in it (inside functions too: a cycle through a late import
    is a cycle all the same). `from grader import x` imports the module `grader.x`, not the package's own file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{up}.{base}" if base else up
            submodules = {f"{base}.{a.name}" for a in node.names} & set(modules)
            found |= submodules if len(submodules) == len(node.names) else {base, *submodules}
    return {m for m in found if m in modules and m != name}


def test_the_package_imports_no_module_that_imports_it_back():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}  # grey while on the path being walked, black when done

    def walk(name: str, path: list[str]) -> None:
        state[name] = "grey"
        for other in sorted(graph[name]):
            if state.get(other) == "grey":
                cycle = [*path[path.index(other) :], other] if other in path else [name, other]
                raise AssertionError("an import cycle: " + " -> ".join(cycle))
            if other not in state:
                walk(other, [*path, other])
        state[name] = "black"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])


def test_no_grader_module_names_an_assignment():
    names = set(assignments.known())
    assert {"backprop_ninja", "wavenet"} <= names
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in names:
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} names the assignment {node.value!r}")


def test_no_grader_module_reads_an_assignments_parameter_by_its_name():
    # Everything particular to an assignment is in its rubric or read from its notebook: no module outside the
    # lecture's (the lecture is makemore by definition) holds a parameter's name as a string, as
    # `params.get("batch_size")` would. (A one-letter name, wavenet's `T`, cannot be told from `x.T` here.)
    parameters = set()
    for name in assignments.known():
        parameters |= {p for p in assignments.load(name).published if len(p) > 1}
    assert {"batch_size", "n_hidden", "seed", "n_embd"} <= parameters
    for path in sorted(PACKAGE.rglob("*.py")):
        if "lecture" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in parameters:
                raise AssertionError(
                    f"{path.relative_to(ROOT)}:{node.lineno} reads the parameter {node.value!r} by its name: say it "
                    "in the rubric, or read it from the notebook"
                )


# The team's decisions: a function over this many lines is several functions, unless its comment says why not.
LONGEST = 60
ONE_FUNCTION = "# One function:"


@functools.cache
def _sources() -> list[tuple[str, list[str], ast.Module]]:
    """Each module of the package: its path from the repository's root, its lines, its tree (read once)."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        out.append((str(path.relative_to(ROOT)), source.splitlines(), ast.parse(source)))
    return out


def _comments_above(lines: list[str], lineno: int) -> list[str]:
    """The comment lines directly above line `lineno` (1-based), top first: none where that line is not one."""
    above = []
    while lineno > 1 and lines[lineno - 2].lstrip().startswith("#"):
        lineno -= 1
        above.append(lines[lineno - 1].strip())
    return above[::-1]


def test_no_function_is_over_60_lines_unless_its_comment_says_why():
    # "No function over 60 lines in grader/ unless its comment says why it must be one": counted from the def
    # (or its first decorator) to its last line, and excused by a line starting `# One function:` in the comment
    # directly above. A long driver reads better as a few named steps (nbclient's `NotebookClient.execute()`).
    offenders = []
    for path, lines, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - first + 1
            excused = any(line.startswith(ONE_FUNCTION) for line in _comments_above(lines, first))
            if length > LONGEST and not excused:
                offenders.append(f"{path}:{first} {node.name} ({length} lines)")
    assert not offenders, (
        f"functions over {LONGEST} lines: split each into named steps, or say why it must be one in a comment "
        f"directly above it that starts with {ONE_FUNCTION!r}\n" + "\n".join(offenders)
    )


def _imports_in_functions(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements inside a function (a nested one's counted once), in the order of their lines."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for statement in node.body:
                found += [n for n in ast.walk(statement) if isinstance(n, (ast.Import, ast.ImportFrom))]
    # (a nested function's imports are walked once from it and once from each function around it)
    return sorted({id(n): n for n in found}.values(), key=lambda n: n.lineno)


def test_every_import_inside_a_function_says_why():
    # ARCHITECTURE.md, "Imports at the top": an import inside a function says why (torch after the workers start,
    # matplotlib after its backend, an optional extra, ...), in a comment on its line, or in the comment line
    # directly above it or above the run of imports it is one of (consecutive lines, no blank line between).
    offenders = []
    for path, lines, tree in _sources():
        imports = _imports_in_functions(tree)
        starts = {n.end_lineno or n.lineno: n.lineno for n in imports}  # an import's last line -> its first
        for node in imports:
            own = lines[node.lineno - 1 : node.end_lineno or node.lineno]
            top = node.lineno
            while top - 1 in starts:
                top = starts[top - 1]  # (an import of the same run, just above)
            if not any("#" in line for line in own) and not _comments_above(lines, top):
                offenders.append(f"{path}:{node.lineno} {own[0].strip()}")
    assert not offenders, (
        "imports inside functions that do not say why (move each to the top of its module, or give the reason "
        "in a comment on its line or directly above it):\n" + "\n".join(offenders)
    )


def test_no_module_imports_a_private_name_of_another():
    # A name another module uses is part of its module's interface: it goes without the leading underscore, with a
    # docstring (or a comment) saying what it guarantees. `from grader.x import _y` shares a private name instead.
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level or (node.module or "").partition(".")[0] == "grader":
                offenders += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.endswith("__")  # (a dunder is no private name)
                ]
    assert not offenders, (
        "private names imported from another module of the package (make each public, with a docstring saying what "
        "it guarantees, or keep its use inside its module):\n" + "\n".join(offenders)
    )


def test_every_silenced_finding_says_why():
    """A `# noqa` or `# type: ignore` names what it silences and says why, on the same line."""
    import re

    pragma = re.compile(r"#\s*(noqa|type:\s*ignore)(?P<codes>(:\s*[A-Z]+[0-9]+(,\s*[A-Z]+[0-9]+)*|\[[a-z-, ]+\]))?")
    bare = []
    for path in sorted((ROOT / "grader").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = pragma.search(line)
            if found is None:
                continue
            reason = line[found.end() :].strip(" #-()")
            if not found.group("codes") or len(reason) < 8:
                bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bare, "silenced without a code or a reason:\n" + "\n".join(bare)
