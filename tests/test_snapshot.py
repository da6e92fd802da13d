"""Issue 27: the setup snapshot. An interpreter that loads what the released setup cells left has the same
namespace, bit for bit, as one that ran them; where the setup leaves what cannot be saved, or the file is
not the one the grader was told of, the setup runs as before."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import NOTEBOOKS

from grader import assignment as assignments
from grader import grade
from grader.plan import PlannedCell
from grader.sandbox import snapshot as snapshots
from grader.sandbox.jobs import plain

# A fresh interpreter builds `Warm` from the spec in argv[1] (as the portable backend's child does) and prints
# a description of its namespace that two processes can compare: every value, tensors as their bytes.
DESCRIBE = r"""
import io, json, os, pickle, random, sys, types
os.environ["ATEN_CPU_CAPABILITY"] = "default"
from grader.sandbox.warm import Warm
spec = json.loads(sys.argv[1])
warm = Warm(spec)
import torch
ns = warm.shell.user_ns

def code_of(c):
    consts = tuple(code_of(k) if isinstance(k, types.CodeType) else k for k in c.co_consts)
    return (c.co_code, consts, c.co_names, c.co_varnames, c.co_freevars, c.co_cellvars, c.co_argcount,
            c.co_posonlyargcount, c.co_kwonlyargcount, c.co_flags, c.co_filename, c.co_name, c.co_qualname,
            c.co_firstlineno, c.co_linetable, c.co_exceptiontable)

def describe(v):
    if type(v) is torch.Tensor:
        raw = bytes(v.detach().reshape(-1).view(torch.uint8).numpy())
        return ("tensor", str(v.dtype), tuple(v.shape), v.stride(), v.requires_grad, v.is_leaf, raw)
    if isinstance(v, types.ModuleType):
        return ("module", v.__name__, sys.modules.get(v.__name__) is v)
    if type(v) is types.FunctionType:
        return ("function", code_of(v.__code__), v.__name__, v.__qualname__, v.__defaults__,
                v.__kwdefaults__, v.__module__, v.__doc__, v.__globals__ is ns, v.__closure__)
    if type(v) is torch.Generator:
        return ("generator", bytes(v.get_state().numpy()), v.initial_seed())
    if isinstance(v, io.IOBase):
        return ("file", type(v).__name__, v.name, v.mode, v.closed, getattr(v, "encoding", None))
    if isinstance(v, type):
        return ("class", v.__module__, v.__qualname__)
    if type(v).__module__ != "builtins":
        return ("other", type(v).__module__, type(v).__qualname__)
    return ("value", type(v).__name__, v)

names = sorted(k for k, v in ns.items() if warm.initial.get(k, ns) is not v)
containers = [k for k in names if type(ns[k]) in (list, dict, set)]
defaults = {k: [[n for n in containers if d is ns[n]] for d in ns[k].__defaults__ or ()]
            for k in names if type(ns[k]) is types.FunctionType}
out = {
    "names": {k: describe(ns[k]) for k in names},
    # which names share one object, and which function defaults are objects the namespace names
    "aliases": sorted({g for k in containers if len(g := tuple(n for n in containers if ns[n] is ns[k])) > 1}),
    "defaults": defaults,
    "locked": sorted(warm.warm.locked_names),
    "outcomes": warm.warm.outcomes,
    "rng": (bytes(torch.get_rng_state().numpy()), random.getstate()),
    "made": warm.snapshot_made,
}
open(sys.argv[2], "wb").write(pickle.dumps(out))
"""


def _warm(folder: Path, prefix: tuple[PlannedCell, ...], snapshot: dict) -> dict:
    spec = {"prefix": plain(prefix), "warm_up": [], "data": {}, "snapshot": snapshot}
    done = subprocess.run(
        [sys.executable, "-c", DESCRIBE, json.dumps(spec), "described"], cwd=folder, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return pickle.loads((folder / "described").read_bytes())


def _setup_of(name: str, tmp_path: Path) -> tuple[Path, tuple[PlannedCell, ...]]:
    """The worker's folder (the data files under the names the notebook reads) and the released setup cells, as
    `grade` gives a worker of `name`'s."""
    assignment = assignments.load(name)
    folder = tmp_path / name
    folder.mkdir()
    for copy, path in grade._copies(assignment).items():
        shutil.copy(path, folder / copy)
    params = grade._Runs.of(assignment, None, None).settings[0] | assignment.rubric.data
    return folder, grade.setup_cells(assignment, params)


@pytest.mark.parametrize("name", ["backprop_ninja", "activations_batchnorm", "leaky_abstractions", "wavenet"])
def test_a_loaded_setup_is_the_setup_bit_for_bit(tmp_path, name):
    folder, prefix = _setup_of(name, tmp_path)
    path = str(folder / "setup.snapshot")
    ran = _warm(folder, prefix, {"path": path})
    assert ran["made"], f"{name}: its setup left something the snapshot cannot hold"
    loaded = _warm(folder, prefix, {"path": path, "digest": ran["made"]})
    assert loaded["made"] == ""  # it loaded: it had nothing to save
    assert loaded["names"].keys() == ran["names"].keys()
    for key, value in ran["names"].items():
        assert loaded["names"][key] == value, key
    assert (loaded["locked"], loaded["outcomes"], loaded["rng"]) == (ran["locked"], ran["outcomes"], ran["rng"])
    assert (loaded["aliases"], loaded["defaults"]) == (ran["aliases"], ran["defaults"])


SAVED_ALL_THE_SAME = """
g = torch.Generator().manual_seed(7)
first = torch.randn(3, generator=g)  # the generator in use: its state, not its seed, is what comes next
CACHE = {"hits": [1, 2]}
same = CACHE
def lookup(key, cache=CACHE, *, scale=2.0):
    "A function whose default is the namespace's own dict."
    return cache.get(key)
"""


def test_generators_shared_objects_and_defaults_come_back_as_the_setup_left_them(tmp_path):
    folder, prefix = _setup_of("backprop_ninja", tmp_path)
    last = prefix[-1]
    changed = (*prefix[:-1], dataclasses.replace(last, source=last.source + "\n" + SAVED_ALL_THE_SAME))
    path = str(folder / "setup.snapshot")
    ran = _warm(folder, changed, {"path": path})
    assert ran["made"]
    loaded = _warm(folder, changed, {"path": path, "digest": ran["made"]})
    assert loaded["names"] == ran["names"]
    assert ran["aliases"] == [("CACHE", "same")]
    assert ran["defaults"]["lookup"] == [["CACHE", "same"]]
    assert (loaded["aliases"], loaded["defaults"], loaded["rng"]) == (ran["aliases"], ran["defaults"], ran["rng"])


def test_a_snapshot_that_is_not_the_one_named_is_not_read(tmp_path):
    folder, prefix = _setup_of("backprop_ninja", tmp_path)
    path = folder / "setup.snapshot"
    made = _warm(folder, prefix, {"path": str(path)})["made"]
    honest = _warm(folder, prefix, {})  # no snapshot at all: the setup as it always ran
    # a notebook replaced it: the same snapshot with the training data zeroed, or something else entirely
    doctored = pickle.loads(path.read_bytes())
    entry = doctored["entries"]["Xtr"]
    doctored["entries"]["Xtr"] = (*entry[:4], bytes(len(entry[4])))
    for replaced in (pickle.dumps(doctored), b"junk"):
        path.write_bytes(replaced)
        again = _warm(folder, prefix, {"path": str(path), "digest": made})
        assert again["names"] == honest["names"]  # it ran the setup itself
    path.unlink()
    path.mkdir()  # not even a file
    assert _warm(folder, prefix, {"path": str(path), "digest": made})["names"] == honest["names"]


@pytest.mark.parametrize(
    "extra",
    [
        "class Point:\n    pass\n",  # a class: not saved
        "import numpy as np\nnp.random.seed(3)\n",  # numpy's generator changed: the namespace does not show it
        "torch.set_default_dtype(torch.float64)\n",  # the same for torch's settings
        "view = Xtr[:10]\n",  # a view shares Xtr's memory: two copies would not
    ],
)
def test_a_setup_that_leaves_more_than_values_is_not_saved(tmp_path, extra):
    folder, prefix = _setup_of("backprop_ninja", tmp_path)
    last = prefix[-1]
    changed = (*prefix[:-1], dataclasses.replace(last, source=last.source + "\n" + extra))
    path = folder / "setup.snapshot"
    assert _warm(folder, changed, {"path": str(path)})["made"] == ""
    assert not path.exists()


def test_the_plain_check_refuses_subclasses_and_bounds_its_walk():
    class Sneaky(str):
        pass

    assert snapshots._plain(["a", ("b", {1: {2.0, 3j}}), None, b"x"])
    assert not snapshots._plain(["a", Sneaky("b")])
    assert not snapshots._plain([object()])
    assert not snapshots._plain(list(range(10)), limit=5)


DOCTOR = """
import pathlib, pickle, sys
for path in pathlib.Path(sys.argv[-1]).parent.glob("setup*.snapshot"):  # the worker's folder: its spec's
    saved = pickle.loads(path.read_bytes())
    entry = saved["entries"]["Xtr"]
    saved["entries"]["Xtr"] = (*entry[:4], bytes(len(entry[4])))  # every training example the same
    path.write_bytes(pickle.dumps(saved))
"""


def test_a_notebook_that_replaces_the_snapshot_changes_no_one_elses_grade(tmp_path):
    # on the portable backend a notebook can write the worker's folder (docs/isolation.md): the interpreters
    # after it must notice that the snapshot is not the one the first interpreter made, and run the setup
    from grader import grade_notebook, notebook, sandbox

    doctoring = notebook.read(NOTEBOOKS / "full_marks.ipynb")
    doctoring.cells.append(nbformat.v4.new_code_cell(DOCTOR))
    nbformat.write(doctoring, tmp_path / "doctoring.ipynb")
    assignment = assignments.load("backprop_ninja")
    portable = sandbox.Backend("portable", requested="portable")
    with sandbox.Pool(grade.hidden_folders(assignment), backend=portable) as pool:
        first = grade_notebook(tmp_path / "doctoring.ipynb", pool=pool)
        (worker,) = pool.workers.values()
        told = worker.snapshot  # type: ignore[attr-defined]  # (a portable worker)
        assert told is not None and told["digest"], "the first interpreter saved no snapshot"
        assert snapshots.digest(Path(told["path"]).read_bytes()) != told["digest"], "the attack did not happen"
        second = grade_notebook(NOTEBOOKS / "full_marks.ipynb", pool=pool)
    assert (first.score, second.score) == (first.max_score, second.max_score), second.notes


KNOWN_CELLS = r"""
import json, os, sys
os.environ["ATEN_CPU_CAPABILITY"] = "default"
from IPython.core.interactiveshell import InteractiveShell
from grader.sandbox.warm import Warm
warm = Warm(json.loads(sys.argv[1]))
shell, sources = warm.shell, json.loads(sys.argv[1])["warm_up"]
released = len(shell.known)
student = json.loads(sys.argv[2])  # a job's own cells, learned by process 1 before its runs are forked
warm.learn([{"cells": [{"source": s} for s in student], "start": 0}] * 3)
plain = lambda source: InteractiveShell.transform_cell(shell, source)  # IPython's own, asked afresh
out = {
    "known": released,
    "learned": [s in shell.known for s in student],
    "same": all(shell.transform_cell(s) == plain(s) for s in sources + student),
    "awaits": [shell.should_run_async(s, transformed_cell=shell.transform_cell(s)) for s in sources],
    "one_line": "exit" in shell.known,
}
known = next(iter(shell.known))
shell.input_transformers_cleanup.append(lambda lines: ["changed = True\n"])  # a cell may add its own
out["after_a_new_transformer"] = shell.transform_cell(known)
print(json.dumps(out))
"""


def test_the_released_cells_are_transformed_ahead_as_ipython_would(tmp_path):
    # the worker transforms each released cell once (IPython tokenizes every cell, a millisecond each), and
    # process 1 a job's own cells once for all its runs; a run gets exactly what IPython would give, and
    # IPython's own answer where the transformers changed since
    folder, prefix = _setup_of("backprop_ninja", tmp_path)
    assignment = assignments.load("backprop_ninja")
    params = grade._Runs.of(assignment, None, None).settings[0] | assignment.rubric.data
    cells = grade.planning.plan(assignment.released, assignment, params).cells
    sources = [c.source for c in cells[len(prefix) :]] + ["exit", "%time x = 1\ny = 2", "await something()\nz = 1"]
    spec = {"prefix": plain(prefix), "warm_up": sources, "data": {}}
    # a student's cells: an answer, a magic, brackets never closed, one too long to learn ahead, one line
    student = [
        "dlogits = F.softmax(logits, 1)\ndlogits[range(n), Yb] -= 1\ndlogits /= n",
        "%time a = 1\nb = a + 1",
        "s = (1,\nx = [1",
        "x = 1\n" * 5000,
        "exit",
    ]
    done = subprocess.run(
        [sys.executable, "-c", KNOWN_CELLS, json.dumps(spec), json.dumps(student)],
        cwd=folder,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = json.loads(done.stdout.decode().splitlines()[-1])
    assert out["known"] >= len(sources) - 3  # every multi-line cell (stubs included); not the single-line one
    assert out["learned"][:2] == [True, True] and out["learned"][3:] == [False, False]
    assert out["same"] and not out["one_line"]
    assert out["awaits"][-1] is True and not any(out["awaits"][:-1])  # top-level await still seen
    assert out["after_a_new_transformer"] == "changed = True\n"
