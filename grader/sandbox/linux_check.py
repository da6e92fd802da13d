"""Whether the Linux backend works on this machine, and in which mode; the reason where it does not.

Part of the Linux backend, but importable everywhere: it looks for the Linux calls by name, never uses
them, and tries the namespaces in a throwaway process (`confine.problem`).
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

LINUX_MODE = "GRADER_LINUX_MODE"
"""Set to `userns` to use the ordinary user's mode of the Linux backend even as root (for benchmarks)."""
_LINUX_APIS = (("os", "fork"), ("os", "pidfd_open"), ("socket", "SOCK_SEQPACKET"), ("socket", "send_fds"))


def _linux_apis_missing() -> str:
    """The first Linux API this Python lacks (macOS, Windows, or a test's stand-in for them), or ''."""
    if not sys.platform.startswith("linux"):
        return f"this is {sys.platform}, not Linux"
    for module, name in _LINUX_APIS:
        if not hasattr(importlib.import_module(module), name):
            return f"this Python has no {module}.{name}"
    try:
        importlib.import_module("resource")
    except ImportError:
        return "this Python has no resource module"
    return ""


@functools.cache
def works_here() -> tuple[str, str]:
    """(mode, '') where the Linux backend works here; ('', why not) where it does not."""
    missing = _linux_apis_missing()
    if missing:
        return "", missing
    from grader.sandbox import confine  # (Linux only: imported once the Linux calls are known to be there)

    why = ""
    # `userns` measures, as root, the mode an ordinary user gets (benchmarks/batch_speed.py --userns)
    if os.geteuid() == 0 and os.environ.get(LINUX_MODE) != "userns":
        why = confine.problem("root") or ""
        if not why:
            return "root", ""
    userns = confine.problem("userns")
    if userns is None:
        return "userns", ""
    return "", why or userns


@functools.cache
def filter_problem() -> str:
    """Why the system-call filter cannot be built here (no libseccomp), or ''."""
    from grader.sandbox.syscalls import Filter  # (Linux only, as above)

    return Filter.make()[1]
