"""OneAtATime: one job at a time in a worker thread; a cancelled job's thread is stopped and
waited for before the next job starts."""

import asyncio
import threading
import time

import pytest

from sdcog.runner import OneAtATime, PredictionCancelledError, stop_if_set


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
