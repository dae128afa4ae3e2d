"""Cancels that Cog 0.23.1 loses, found and honoured.

Cog runs an async predict() by submitting it from one of its own threads to the event loop and
blocking that thread in `concurrent.futures.Future.result()`. A cancel is delivered by
cancelling the future, except in the few milliseconds before Cog has recorded the future (while
it prepares the inputs: longer when it downloads a URL input). There it takes the prediction for
a sync one and injects CancelationException into its own waiting thread with
PyThreadState_SetAsyncExc. A thread blocked in a lock wait runs no Python code, so the exception
stays pending until predict() has finished; Cog then reports the prediction "failed:
CancelationException" after all its work (seen in one of ten cancels sent with the prediction).

The waiting thread is found from the running task: it is the one whose `result()` waits on the
future that asyncio chained to the task. Whether an exception is pending on a thread is read
from its thread state, at the offset of its pending asynchronous exception, which `_offset()`
measures once on a thread of its own (no layout is assumed). A pending CancelationException is
taken off that thread and the prediction is cancelled as a normal cancel would have cancelled
it; Cog then reports it "canceled". When the exception fires just as the thread begins to wait,
Cog reports the prediction failed at once and nothing waits for it any more: it is stopped
rather than left to run to the end with the model held.
"""

import asyncio
import ctypes
import functools
import sys
import threading
import time
from concurrent.futures import Future

from cog import CancelationException

_api = ctypes.PyDLL(None)  # its own handle: these prototypes stay out of ctypes.pythonapi
_api.PyInterpreterState_Get.restype = ctypes.c_void_p
_api.PyInterpreterState_ThreadHead.argtypes = [ctypes.c_void_p]
_api.PyInterpreterState_ThreadHead.restype = ctypes.c_void_p
_api.PyThreadState_Next.argtypes = [ctypes.c_void_p]
_api.PyThreadState_Next.restype = ctypes.c_void_p
_api.PyThreadState_GetFrame.argtypes = [ctypes.c_void_p]
_api.PyThreadState_GetFrame.restype = ctypes.c_void_p  # a new reference, or NULL
_api.Py_DecRef.argtypes = [ctypes.c_void_p]
_api.PyThreadState_SetAsyncExc.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
_api.PyThreadState_SetAsyncExc.restype = ctypes.c_int


def _thread_state(thread_id: int) -> int | None:
    """The address of a thread's state, found by its current frame (CPython has no public
    lookup by thread id)."""
    frame = sys._current_frames().get(thread_id)
    state = _api.PyInterpreterState_ThreadHead(_api.PyInterpreterState_Get())
    while frame is not None and state:
        current = _api.PyThreadState_GetFrame(state)
        if current:
            _api.Py_DecRef(current)
        if current == id(frame):
            return state
        state = _api.PyThreadState_Next(state)
    return None


@functools.cache
def _offset() -> int | None:
    """Where a thread state holds its pending asynchronous exception: found by setting one on a
    thread blocked in a lock wait and looking for it (twice, with two markers), then taking it
    off again before the thread runs."""
    blocked, release = threading.Event(), threading.Lock()
    release.acquire()

    def wait() -> None:
        blocked.set()
        release.acquire()  # C code: a pending exception cannot fire here

    thread = threading.Thread(target=wait, daemon=True, name="cog-cancel-probe")
    thread.start()
    blocked.wait()
    state = _thread_state(thread.ident)
    found: set[int] = set()
    try:
        for marker in (type("MarkerA", (Exception,), {}), type("MarkerB", (Exception,), {})):
            _api.PyThreadState_SetAsyncExc(thread.ident, id(marker))
            words = range(0, 2048, ctypes.sizeof(ctypes.c_void_p))
            found.add(frozenset(o for o in words if _word(state + o) == id(marker)))
    finally:
        _api.PyThreadState_SetAsyncExc(thread.ident, None)
        release.release()
        thread.join()
    offsets = frozenset.intersection(*found) if found else frozenset()
    return next(iter(offsets)) if len(offsets) == 1 else None


def _word(address: int) -> int | None:
    return ctypes.c_void_p.from_address(address).value


async def honour_lost_cancels(
    task: asyncio.Task, interval_s: float = 0.05, unwaited_s: float = 2.0
) -> None:
    """Cancel `task` (a prediction Cog submitted) when Cog's cancel is pending on the thread
    that waits for it, or when no thread has waited for it for `unwaited_s`: the cancel fired
    as that thread began to wait, and Cog has already reported the prediction failed."""
    future = _awaited_future(task)
    if future is None:  # not submitted by Cog
        return
    waited = time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        thread_id = _waiting_thread(future)
        if thread_id is not None:
            waited = time.monotonic()
            if _take_cancel(thread_id):
                print("cancelled (Cog's cancel had gone to the thread that waits for the result)")
                task.cancel()
                return
        elif time.monotonic() - waited > unwaited_s:
            print("stopped: Cog no longer waits for this prediction (it has reported it failed)")
            task.cancel()
            return


def _awaited_future(task: asyncio.Task) -> Future | None:
    """The future that asyncio.run_coroutine_threadsafe copies `task`'s result into."""
    for callback, _context in task._callbacks or ():
        cells = dict(zip(callback.__code__.co_freevars, callback.__closure__ or (), strict=True))
        destination = cells["destination"].cell_contents if "destination" in cells else None
        if isinstance(destination, Future):
            return destination
    return None


def _waiting_thread(future: Future) -> int | None:
    """The thread blocked in future.result(), if there is one."""
    for thread_id, frame in sys._current_frames().items():
        while frame is not None:
            code = frame.f_code
            if code.co_name == "result" and code.co_filename.endswith("futures/_base.py"):
                if frame.f_locals.get("self") is future:
                    return thread_id
            frame = frame.f_back
    return None


def _take_cancel(thread_id: int) -> bool:
    """Whether Cog's CancelationException is pending on the thread; if it is, it is taken off,
    so the thread sees the task's cancellation instead."""
    offset = _offset()
    state = _thread_state(thread_id)
    if offset is None or state is None or _word(state + offset) != id(CancelationException):
        return False
    _api.PyThreadState_SetAsyncExc(thread_id, None)
    return True
