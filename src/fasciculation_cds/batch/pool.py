"""The worker processes of the local engine, and stopping them on Ctrl-C, SIGTERM or failure."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context, resource_tracker
from types import FrameType
from typing import Any, TypeVar

from ..evaluate import evaluator_for
from .options import Stopped
from .worker import start_worker

T = TypeVar("T")


def start_method() -> str:
    """fork when it is safe, else spawn.

    A forked worker starts with the package imported and the rules loaded (a spawned one
    re-imports everything: about a second of each worker's time). It is safe on Linux while this
    process runs no other thread and has built no durable-rules host (the engine's C state must
    not be shared): then each worker builds its own, as a spawned one would.
    """
    if sys.platform.startswith("linux") and threading.active_count() == 1 \
            and evaluator_for.cache_info().currsize == 0:
        return "fork"
    return "spawn"


class WorkerDiedError(Exception):
    """A worker process ended without finishing its task (killed, out of memory)."""


class Workers:
    """`workers` processes (each builds its own durable-rules host), or the calling process
    itself for one worker (no start-up to pay)."""

    def __init__(self, workers: int, rules_dir: str | None = None) -> None:
        self.executor: ProcessPoolExecutor | None = None
        self.size = workers
        self.futures: list[Future[Any]] = []
        if workers > 1:
            self.executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=get_context(start_method()),
                initializer=start_worker, initargs=(os.getpid(), rules_dir))
            with _sigint_blocked():  # a process starts at each submit while none is idle
                self.futures = [self.executor.submit(os.getpid) for _ in range(workers)]

    def unordered(self, fn: Callable[..., T], calls: Sequence[tuple[Any, ...]]) -> Iterator[T]:
        """fn(*args) for each call, as they finish. Looks `fn` up at call time in serial mode."""
        if self.executor is None:
            for args in calls:
                yield fn(*args)
            return
        with _sigint_blocked():  # processes start here: see _sigint_blocked
            self.futures = [self.executor.submit(fn, *args) for args in calls]
        try:
            for future in as_completed(self.futures):
                yield future.result()
        except BrokenProcessPool:
            raise WorkerDiedError("a worker process ended unexpectedly (killed, or out of memory?)"
                             ) from None

    def stop(self) -> None:
        """Now: drop queued tasks and end the processes (a shard being evaluated is redone by
        --resume; its part is written whole or not at all)."""
        if self.executor is None:
            return
        for future in self.futures:
            future.cancel()
        # the executor has no public way to end busy workers before Python 3.14
        processes = list(getattr(self.executor, "_processes", {}).values())
        previous_hook = threading.excepthook
        threading.excepthook = _quiet_cancelled_futures
        try:
            for process in processes:
                process.terminate()
            self.executor.shutdown(wait=True, cancel_futures=True)
        finally:
            threading.excepthook = previous_hook
        for process in processes:
            process.join(timeout=5)
        self.executor = None
        _stop_resource_tracker()

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
            _stop_resource_tracker()


def _quiet_cancelled_futures(args: threading.ExceptHookArgs) -> None:
    """While stopping, the executor's manager thread may try to fail futures this run has
    already cancelled (a race in CPython's executor raises InvalidStateError there): nothing is
    lost, so say nothing; anything else goes to the usual hook."""
    if isinstance(args.exc_value, InvalidStateError):
        return
    threading.__excepthook__(args)


def _stop_resource_tracker() -> None:
    """The spawn pool's queues start multiprocessing's resource tracker, a child that would
    otherwise outlive this process by a moment: wait for it, so the run ends with no child."""
    gc.collect()  # the pool's semaphores unregister themselves when collected
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    stop = getattr(tracker, "_stop", None)
    if callable(stop):
        stop()


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Workers start with SIGINT blocked (the mask survives exec), until `watch_parent` ignores
    it: a Ctrl-C during their start-up is the parent's alone, with no traceback from a child.
    A Ctrl-C meanwhile reaches the parent when the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def workers_of(count: int, rules_dir: str | None = None) -> Iterator[Workers]:
    pool = Workers(count, rules_dir)
    try:
        yield pool
    except BaseException:
        pool.stop()
        raise
    pool.close()


@contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM raises Stopped in the main thread, so the run unwinds as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signal_number: int, frame: FrameType | None) -> None:
        raise Stopped(signal_number)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
