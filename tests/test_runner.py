"""OneAtATime: one job at a time in a worker thread; a cancelled job's thread is stopped and
waited for before the next job starts."""

import asyncio
import concurrent.futures
import ctypes
import threading
import time
from collections.abc import Callable

import pytest
from cog import CancelationException

from sdcog.common.cancel import PredictionCancelledError, stop_if_set
from sdcog.serving.runner import OneAtATime


def test_jobs_run_one_at_a_time_off_the_event_loop():
    model = OneAtATime()
    running: list[str] = []
    overlaps: list[bool] = []
    loop_thread = threading.get_ident()

    def job(name: str):
        def work(cancelled: threading.Event) -> tuple[str, bool]:
            overlaps.append(bool(running))
            running.append(name)
            time.sleep(0.05)
            running.remove(name)
            return name, threading.get_ident() != loop_thread

        return work

    async def main():
        return await asyncio.gather(*(model.run(job(n)) for n in "abc"))

    assert asyncio.run(main()) == [("a", True), ("b", True), ("c", True)]
    assert overlaps == [False, False, False]


def test_cancelling_stops_the_thread_before_the_next_job():
    model = OneAtATime()
    events: list[str] = []
    stop_seen = threading.Event()

    def slow(cancelled: threading.Event) -> None:
        check = stop_if_set(cancelled)
        for step in range(1000):  # a denoising loop calling its step callback
            try:
                check(None, step, None, {})
            except PredictionCancelledError:
                stop_seen.set()
                events.append("stopped")
                raise
            time.sleep(0.01)

    def quick(cancelled: threading.Event) -> str:
        events.append("next")
        return "done"

    async def main():
        first = asyncio.ensure_future(model.run(slow))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(model.run(quick))
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        return await second

    assert asyncio.run(main()) == "done"
    assert stop_seen.is_set() and events == ["stopped", "next"]


@pytest.fixture
def cogs_loop():
    """An event loop in a thread of its own, as Cog's worker runs one for async predictors."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)


def denoising(steps: list[int], total: int) -> Callable[[threading.Event], str]:
    """A job of `total` 10 ms steps that calls the step callback, recording each step run."""

    def work(cancelled: threading.Event) -> str:
        check = stop_if_set(cancelled)
        for step in range(total):
            check(None, step, None, {})
            steps.append(step)
            time.sleep(0.01)
        return "finished"

    return work


def test_a_cancel_cog_sent_to_its_waiting_thread_cancels_the_prediction(cogs_loop):
    # Cog 0.23.1's race: its thread waits in result() for the task, and a cancel that arrived
    # before Cog had recorded the future is injected into that thread as CancelationException,
    # where it would fire only once the whole prediction was done.
    steps: list[int] = []
    outcome: list[str] = []

    def cogs_thread() -> None:
        job = denoising(steps, 500)
        future = asyncio.run_coroutine_threadsafe(OneAtATime().run(job), cogs_loop)
        try:
            outcome.append(future.result())
        except concurrent.futures.CancelledError:
            outcome.append("canceled")
        except CancelationException:
            outcome.append("CancelationException")

    thread = threading.Thread(target=cogs_thread)
    thread.start()
    time.sleep(0.2)  # blocked in result() by now
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(CancelationException)
    )
    started = time.monotonic()
    thread.join(timeout=10)
    assert outcome == ["canceled"]
    assert time.monotonic() - started < 1
    assert len(steps) < 150  # stopped, not run to the end


def test_a_prediction_no_one_waits_for_is_stopped(cogs_loop):
    # The same race, when the exception fires as Cog's thread begins to wait: Cog reports the
    # prediction failed at once and nothing reads its result; the model must not stay busy.
    model = OneAtATime()
    steps: list[int] = []
    started = time.monotonic()
    asyncio.run_coroutine_threadsafe(model.run(denoising(steps, 1000)), cogs_loop)  # no waiter
    follower = asyncio.run_coroutine_threadsafe(model.run(lambda cancelled: "next"), cogs_loop)
    assert follower.result(timeout=10) == "next"  # waited for: it runs
    assert time.monotonic() - started < 4
    assert len(steps) < 400


def test_a_cancelled_stream_leaves_no_task_pending():
    """A prediction cancelled while its stream waits for the next item leaves no task behind:
    in Cog's loop, which runs forever, the garbage collector would find it pending later, and
    asyncio would log "Task was destroyed but it is pending!", with its own file paths, into
    whatever prediction runs then."""
    model = OneAtATime()

    def work(cancelled: threading.Event, emit: Callable[[str], None]) -> list[str]:
        check = stop_if_set(cancelled)
        emit("first preview")
        for step in range(1000):
            check(None, step, None, {})
            time.sleep(0.01)
        return ["image"]

    async def main() -> set[asyncio.Task]:
        async def consume() -> list[str]:
            return [item async for item in model.stream(work)]

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.2)  # the first preview is out; the stream waits for the next
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(main()) == set()
