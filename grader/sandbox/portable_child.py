"""The portable backend's child: a fresh interpreter that warms up, takes one job, runs it and exits.

    python -m grader.sandbox.portable_child SPEC_JSON

It imports torch and runs the released setup cells (`warm.Warm`), or loads what they left from the
setup snapshot the grader names (`snapshot`), says `ready` on its standard output (with the digest of
a snapshot it saved, for the grader to hand the next interpreters), then reads one job (a line of
JSON) from its standard input. Every run's files are opened before the notebook's first cell, so a
notebook that renames or replaces them changes nothing the grader reads. Nothing here needs more than
what Python has on macOS, Windows and Linux.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading

from grader.sandbox.runner import error_line
from grader.sandbox.snapshot import ENVIRONMENT
from grader.sandbox.warm import Warm


def _end_with(grader: int) -> None:
    """Wait for the end of the grader's pipe, then end this process and its process group."""
    try:
        while os.read(grader, 4096):
            pass
    except OSError:  # the notebook closed or replaced the descriptor: end all the same
        pass
    if hasattr(os, "killpg"):  # POSIX: the processes the notebook started and left in its group too
        with contextlib.suppress(OSError):
            os.killpg(0, 9)
    os._exit(70)


def main(argv: list[str]) -> int:
    (spec_path,) = argv
    # the grader's channel, kept apart from file descriptor 1, which becomes each run's output
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what the setup cells print goes to the log, not the channel
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    # where the setup snapshot is (and its digest, once the grader knows one): not for the notebook to see
    spec["snapshot"] = json.loads(os.environ.pop(ENVIRONMENT, "{}"))
    try:
        warm = Warm(spec)
    except BaseException as e:
        channel.write(f"error {error_line(e)}\n")
        channel.close()
        return 1
    channel.write(f"ready {warm.snapshot_made}".strip() + "\n")  # the digest of a snapshot it saved, if any
    channel.close()
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0  # the grader closed without a job for it: a spare nobody needed
    job = json.loads(line)
    # The grader keeps the pipe open while it waits for the job: its end means the grader is gone. The
    # notebook gets an empty standard input instead, as on Linux (`input()` raises EOFError).
    grader = os.dup(sys.stdin.fileno())
    with open(os.devnull, "rb") as empty:
        os.dup2(empty.fileno(), sys.stdin.fileno())
    threading.Thread(target=_end_with, args=(grader,), daemon=True).start()
    binary = getattr(os, "O_BINARY", 0)  # Windows: no newline translation in the result file
    fds = [os.open(path, os.O_WRONLY | binary) for run in job["runs"] for path in run["files"]]
    warm.write_data(job["workdir"])
    # the grader sees a run begin in its progress file
    warm.run_job(job["runs"], job["workdir"], fds, lambda: None, job.get("cell_timeout"))
    # Skip the interpreter's clean-up: tearing down torch takes half a second and nothing is left to save.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
