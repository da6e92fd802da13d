"""The cell clock: a cell that runs past its share of the time is interrupted, as Jupyter interrupts one.

Runs in the child on every platform: where there are no signals to send a thread (Windows) it falls
back on `_thread.interrupt_main`.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import FrameType


class CellClock:
    """Interrupts the cell running in the main thread once it has had its share of the time.

    The interrupt is Python's own for Ctrl-C (SIGINT where there are signals, `interrupt_main` where
    not), so it lands as a KeyboardInterrupt in the cell, between two bytecodes or in a blocking call.
    Our handler raises only while a cell runs: an interrupt that arrives just after the cell ended does
    nothing. A notebook that catches or ignores it runs on until the run's own timeout ends the process.
    """

    current: CellClock | None = None  # the signal handler is process-wide: it finds the running cell's clock here

    def __init__(self) -> None:
        self.running = False
        self.rang = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.deadline: float | None = None  # while a cell runs with a budget: when it has had its share
        self.watcher: tuple[int, threading.Thread] | None = None  # (the process it watches for, the thread)

    @staticmethod
    def install() -> None:
        """In the main thread, before the first cell: our handler for the interrupt."""

        def handler(signum: int, frame: FrameType | None) -> None:
            clock = CellClock.current
            if clock is not None and clock.running:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, handler)

    @contextlib.contextmanager
    def budget(self, seconds: float | None) -> Iterator[None]:
        self.rang = False
        if not seconds:
            yield
            return
        self._watch()
        CellClock.current = self
        with self.lock:
            self.running = True
            self.deadline = time.monotonic() + seconds
            self.changed.notify()
        try:
            yield
        finally:
            with self.lock:
                self.running = False
                self.deadline = None
                self.changed.notify()

    def _watch(self) -> None:
        """Start the thread that watches the cells' budgets, once per process: a thread per cell cost about as
        much as a short cell (its start and end, ten times a run), and a fork has none of its parent's threads."""
        if self.watcher is not None and self.watcher[0] == os.getpid() and self.watcher[1].is_alive():
            return
        thread = threading.Thread(target=self._wait, name="cell clock", daemon=True)
        self.watcher = (os.getpid(), thread)
        thread.start()

    def _wait(self) -> None:
        with self.lock:
            while True:
                if self.deadline is None:
                    self.changed.wait()
                    continue
                left = self.deadline - time.monotonic()
                if left > 0:
                    self.changed.wait(left)
                    continue
                self.deadline = None
                self._ring()

    def _ring(self) -> None:
        """With the lock held: interrupt the cell still running."""
        if not self.running:
            return
        self.rang = True
        if hasattr(signal, "pthread_kill"):  # a real signal: it also ends a blocking call (sleep, read)
            main = threading.main_thread().ident
            assert main is not None  # the main thread is running: it has an ident
            signal.pthread_kill(main, signal.SIGINT)
        else:
            _thread.interrupt_main()
