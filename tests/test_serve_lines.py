"""script/serve's output: Cog's JSON log lines as a person reads them."""

import json

from sdcog.tools import serve
from sdcog.tools.serve import Readable


def record(message: str, prediction: str | None = "pred_1", level: str = "INFO") -> str:
    fields = {"message": message} | ({"prediction_id": prediction} if prediction else {})
    return json.dumps({"timestamp": "2026-12-07T12:40:41.123Z", "level": level,
                       "fields": fields, "target": "coglet::prediction"})  # fmt: skip


def test_a_line_is_its_time_level_prediction_and_message():
    readable = Readable()
    assert readable(record("output 0: seed 5")) == "12:40:41 INFO pred_1 output 0: seed 5"
    assert readable(record("Server ready", None)) == "12:40:41 INFO Server ready"
    assert readable("plain text from the worker\n") == "plain text from the worker"
    assert readable(record("")) is None


def test_a_progress_bar_shows_now_and_then_and_when_it_completes(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(serve.time, "monotonic", lambda: now[0])
    readable = Readable()
    bars = [f"{p}%|##  | {p // 10}/10 [00:01<00:02,  1.5it/s]" for p in (0, 10, 20, 100)]
    shown = [readable(record(bars[0])), readable(record(bars[1]))]
    now[0] += serve.BAR_EVERY_S
    shown += [readable(record(bars[2])), readable(record(bars[3]))]
    assert [s is not None for s in shown] == [True, False, True, True]
    assert readable(record(bars[1], "pred_2")) is not None  # each prediction its own
