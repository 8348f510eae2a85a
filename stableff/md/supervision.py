"""Worker processes that never outlive the command that started them."""

from __future__ import annotations

import contextlib
import os
import threading


def die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: end this process when the parent dies (a killed ``stability`` leaves no
    orphans running MD): PR_SET_PDEATHSIG on Linux, and a watchdog thread everywhere. Also applies
    the command line's allocator settings (``stableff.runtime``)."""
    from stableff.runtime import tune_allocator

    tune_allocator()
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        import time

        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def worker_pool(processes: int):
    """A spawn pool whose workers die with this process: closed and joined after the work (so the
    workers release their semaphores), terminated on any error or interruption."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(processes, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def errors_travel_whole(function):
    """Wrap a worker function so that any exception it raises reaches the parent: one that does not
    survive pickling (a library's exception with its own constructor) would kill the pool's result
    thread and leave the parent waiting for ever; it is sent as RuntimeError with its message."""
    import functools
    import pickle

    @functools.wraps(function)
    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            try:
                pickle.loads(pickle.dumps(exc))
            except Exception:
                raise RuntimeError(f"{type(exc).__name__} in a worker process: {exc}") from None
            raise

    return run
