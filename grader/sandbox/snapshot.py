"""The setup snapshot: what the released setup cells leave, saved once and loaded bit-identically.

The portable backend starts a fresh interpreter for every submission, and each ran the released setup
cells again (backprop_ninja's data set is half a second of Python loops). The first interpreter of a
worker saves what the setup left (`take`, before any notebook of a student has run in it); the later
ones load that (`load`) instead of running the cells. Guarantees:

- **Only what can be made again exactly.** Every name the setup bound holds a tensor that owns its
  memory (no view, no graph), a plain value (None, bool, int, float, complex, str, bytes, and lists,
  tuples, dicts, sets of them), a module (bound again by importing its name), a function the setup
  defined (made again from its code: no closure, no decorator's wrapper, plain defaults), a file the
  setup opened and closed (opened by the same name and closed again), or a CPU `torch.Generator`. If
  anything else is there, or the setup's cells use IPython's magics, or the setup changed what its
  namespace does not show (numpy's global generator, grad mode, the default dtype, the environment,
  `sys.path`, the working folder: `warm.Warm` compares them), `take` returns None and every
  interpreter runs the setup as before.
- **Bit-identical.** Tensors come back byte for byte, with their dtype, shape and `requires_grad`;
  plain values are saved in one piece, so two names bound to one list are still bound to one list.
  torch's and `random`'s global generators are restored to the state the setup left them in.
- **Checked before it is read.** The bytes are loaded only if their SHA-256 is the digest the grader
  received from the interpreter that made them, on its own pipe and before any notebook ran there: a
  run of another notebook that replaced the file only makes the next interpreter run the setup itself.
  The unpickler refuses every class: the file holds plain values only (code as `marshal` bytes).

Portable: nothing here may use an API that macOS or Windows lacks.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import marshal
import os
import pickle
import random
import stat
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType

ENVIRONMENT = "GRADER_SETUP_SNAPSHOT"
"""How the portable backend tells an interpreter where the snapshot is: JSON, `path` and `digest` (none yet: save
one there)."""
PLAIN_ATOMS = (type(None), bool, int, float, complex, str, bytes)
MOST_PLAIN_OBJECTS = 5_000_000
"""A bound on the plain objects a snapshot walks (a data set as a list of strings is well under)."""
_UNSAVED = object()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def take(
    torch: ModuleType, ns: dict[str, Any], initial: dict[str, Any], locked: dict[str, Any], state: dict[str, Any]
) -> bytes | None:
    """The snapshot of the setup's namespace `ns` (what it bound beyond `initial`), or None where it cannot be
    made again exactly. `locked` is the setup runner's locked names; `state` holds its cells' `outcomes`, the
    `modules` it imported, and whether it changed anything outside the namespace (`globals_changed`) or used
    IPython's `magics`: see the module's guarantees."""
    if state.get("globals_changed") or state.get("magics"):
        return None
    if any(ns.get(name, _UNSAVED) is not value for name, value in locked.items()):
        return None  # a locked cell bound a name a later one deleted: the namespace alone does not say it
    bound = {name: value for name, value in ns.items() if initial.get(name, _UNSAVED) is not value}
    gone = [name for name in initial if name not in ns]
    entries: dict[str, tuple] = {}
    plain: dict[str, object] = {}
    owners: set[int] = set()
    for name, value in bound.items():
        entry = _entry(torch, ns, value, owners)
        if entry is not None and entry[0] == "refuse":
            return None
        if entry is None:
            if not _plain(value):
                return None
            plain[name] = value
        else:
            entries[name] = entry
    snapshot = {
        "entries": entries,
        "plain": plain,
        "gone": gone,
        "locked": sorted(locked),
        "outcomes": state["outcomes"],
        "modules": sorted(state["modules"]),
        "rng": (_tensor_bytes(torch, torch.get_rng_state()), random.getstate()),
    }
    try:
        return pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, RecursionError, TypeError, ValueError):
        return None


def _entry(torch: ModuleType, ns: dict[str, Any], value: Any, owners: set[int]) -> tuple | None:
    """How a value that is not plain is made again: `("refuse",)` where it cannot be, None where it may be plain
    (`take` then checks that it is)."""
    if type(value) is torch.Tensor:
        return _tensor_entry(torch, value, owners)
    if isinstance(value, types.ModuleType):
        name = getattr(value, "__name__", None)
        return ("module", name) if isinstance(name, str) and sys.modules.get(name) is value else ("refuse",)
    if type(value) is types.FunctionType:
        return _function_entry(ns, value)
    if type(value) is torch.Generator and value.device.type == "cpu":
        return ("generator", _tensor_bytes(torch, value.get_state()))
    if type(value) is io.TextIOWrapper and value.closed:  # `with open(path) as f:` leaves `f`
        name = value.name
        return ("file", name, value.mode, value.encoding, value.errors) if isinstance(name, str) else ("refuse",)
    return None


def _tensor_entry(torch: ModuleType, value: Any, owners: set[int]) -> tuple:
    storage = value.untyped_storage()
    if (
        value.grad_fn is not None
        or value.grad is not None
        or value.layout != torch.strided
        or value.device.type != "cpu"
        or value.is_quantized
        or value.is_conj()
        or value.is_neg()
        or not value.is_contiguous()
        or value.storage_offset() != 0
        or storage.nbytes() != value.numel() * value.element_size()
        or storage.data_ptr() in owners
    ):
        return ("refuse",)
    owners.add(storage.data_ptr())
    dtype = str(value.dtype).removeprefix("torch.")
    return ("tensor", dtype, tuple(value.shape), value.requires_grad, _tensor_bytes(torch, value))


def _function_entry(ns: dict[str, Any], fn: types.FunctionType) -> tuple:
    if fn.__globals__ is not ns or fn.__closure__ is not None or fn.__dict__ or fn.__module__ != ns.get("__name__"):
        return ("refuse",)
    parts = (fn.__defaults__, fn.__kwdefaults__, fn.__annotations__, fn.__doc__)
    if not all(_plain(part) for part in parts):
        return ("refuse",)
    return ("function", marshal.dumps(fn.__code__), fn.__name__, fn.__qualname__, *parts)


def _plain(value: object, limit: int = MOST_PLAIN_OBJECTS) -> bool:
    """Whether `value` is a plain value all the way down, in at most `limit` objects (exact types only: a subclass
    may hold anything)."""
    todo = [value]
    while todo:
        item = todo.pop()
        limit -= 1
        if limit < 0:
            return False
        kind = type(item)
        if kind in PLAIN_ATOMS:
            continue
        if kind in (list, tuple, set, frozenset) and isinstance(item, list | tuple | set | frozenset):
            todo.extend(item)
        elif kind is dict and isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        else:
            return False
    return True


def _tensor_bytes(torch: ModuleType, value: Any) -> bytes:
    return bytes(value.detach().reshape(-1).view(torch.uint8).numpy())


class _PlainOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the setup snapshot holds plain values only, not {module}.{name}")


def load(torch: ModuleType, data: bytes, expected: str, ns: dict[str, Any]) -> dict | None:
    """Bind in `ns` what the snapshot `data` saved and restore the global generators; returns the setup runner's
    state (`locked`, `outcomes`), or None (and `ns` untouched) where `data` is not the snapshot `expected` names
    or something in it cannot be made again here."""
    if digest(data) != expected:
        return None
    try:
        snapshot = _PlainOnly(io.BytesIO(data)).load()
        for module in snapshot["modules"]:
            importlib.import_module(module)
        made = {name: _made(torch, ns, entry) for name, entry in snapshot["entries"].items()}
    except (pickle.UnpicklingError, ImportError, OSError, ValueError, TypeError, KeyError):
        return None
    for name in snapshot["gone"]:
        ns.pop(name, None)
    ns.update(snapshot["plain"])
    ns.update(made)
    torch.set_rng_state(_tensor_from(torch, "uint8", (-1,), snapshot["rng"][0]))
    random.setstate(snapshot["rng"][1])
    return {"locked": {name: ns[name] for name in snapshot["locked"]}, "outcomes": snapshot["outcomes"]}


def _made(torch: ModuleType, ns: dict[str, Any], entry: tuple) -> object:
    kind = entry[0]
    if kind == "tensor":
        _, dtype, shape, requires_grad, data = entry
        return _tensor_from(torch, dtype, shape, data).requires_grad_(requires_grad)
    if kind == "module":
        return importlib.import_module(entry[1])
    if kind == "function":
        _, code, name, qualname, defaults, kwdefaults, annotations, doc = entry
        fn = types.FunctionType(marshal.loads(code), ns, name, defaults)
        fn.__qualname__, fn.__kwdefaults__, fn.__annotations__, fn.__doc__ = qualname, kwdefaults, annotations, doc
        return fn
    if kind == "generator":
        generator = torch.Generator()
        generator.set_state(_tensor_from(torch, "uint8", (-1,), entry[1]))
        return generator
    if kind == "file":
        _, name, mode, encoding, errors = entry
        opened = open(name, mode, encoding=encoding, errors=errors)  # noqa: SIM115 -- closed at once, as the setup left it
        opened.close()
        return opened
    raise ValueError(f"the setup snapshot holds an entry of an unknown kind: {kind!r}")


def _tensor_from(torch: ModuleType, dtype: str, shape: tuple, data: bytes) -> Any:
    kind = getattr(torch, dtype)
    if not data:
        return torch.empty(shape, dtype=kind)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(kind).reshape(shape).clone()


MOST_BYTES = 1 << 30
"""The largest snapshot read (a data set of a few hundred megabytes is already far beyond an exercise's)."""


def read(path: str) -> bytes | None:
    """The file at `path` if it is a regular file of at most `MOST_BYTES`; None otherwise. Never follows a link
    and never waits on a pipe: a notebook may have put either there."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MOST_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MOST_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def write(path: str, data: bytes) -> bool:
    """`data` to `path` in one piece (a temporary file renamed over it); whether it was written."""
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "xb") as f:  # made here, never a file or a link someone put there
            f.write(data)
        os.replace(partial, path)
    except OSError:
        return False
    return True
