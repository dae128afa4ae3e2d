"""Previews through Cog's real server, and what Cog 0.23.1 does with a streaming predictor.

predict() is an async generator (its slots are what keep back-to-back clients from 409, see
sdcog/serving/runner.py). Cog 0.23.1 collects an async generator's outputs until it ends: a sync
response and the completed webhook hold the previews, then the images, but no output event
arrives while the prediction runs, and a cancelled one keeps none (a sync generator would stream,
with one slot). The two xfail tests say so, and start passing when Cog streams async generators.
"""

import threading
import time

import pytest
import requests
from helpers import output_images

from sdcog.common.protocol import final_outputs, previews

SMALL = {"prompt": "a lighthouse", "num_inference_steps": 6, "width": 128, "height": 128,
         "seed": 9}  # fmt: skip
COG_COLLECTS = "Cog 0.23.1: an async generator predictor's outputs are collected until it ends"


def test_the_output_is_the_previews_then_the_same_images(server):
    plain = server.predict(**SMALL, num_outputs=2)
    result = server.predict(**SMALL, preview_every=2, num_outputs=2)
    assert previews(result["logs"]) == [(0, 2), (1, 2), (0, 4), (1, 4), (0, 6), (1, 6)]
    assert len(result["output"]) == 6 + 2
    assert all(uri.startswith("data:image/jpeg") for uri in result["output"][:6])
    images = final_outputs(result)
    assert images == plain["output"]  # the same bytes as without previews
    output_images({"status": "succeeded", "output": images})


def test_the_completed_webhook_holds_previews_and_images(sd_server, webhooks):
    response = sd_server.post(
        SMALL | {"preview_every": 3},
        headers={"Prefer": "respond-async"},
        webhook=webhooks.url,
        webhook_events_filter=["completed"],
    )
    assert response.status_code == 202
    final = webhooks.final()
    assert final["status"] == "succeeded" and len(final["output"]) == 2 + 1
    assert final_outputs(final) == final["output"][2:]


def _events_while_running(server, webhooks, cancel_after: float | None = None) -> list[dict]:
    """Every webhook event of a 40-step prediction with a preview every 2 steps."""
    body = SMALL | {"num_inference_steps": 40, "width": 256, "height": 256, "preview_every": 2}
    response = server.post(body, headers={"Prefer": "respond-async"}, webhook=webhooks.url)
    if cancel_after is not None:
        prediction = response.json()["id"]
        url = f"{server.url}/predictions/{prediction}/cancel"
        threading.Timer(cancel_after, lambda: requests.post(url, timeout=10)).start()
    events = []
    while (event := webhooks.next())["status"] not in webhooks.TERMINAL:
        events.append(event | {"received": time.monotonic()})
    return events + [event]


@pytest.mark.xfail(strict=True, reason=COG_COLLECTS)
def test_previews_reach_a_webhook_while_the_prediction_runs(sd_server, webhooks):
    events = _events_while_running(sd_server, webhooks)
    running = [e for e in events[:-1] if e.get("output")]
    # The first preview (step 2 of 40) arrives well before the last event.
    assert running and events[-1]["received"] - running[0]["received"] > 0.5


@pytest.mark.xfail(strict=True, reason=COG_COLLECTS)
def test_a_cancelled_prediction_keeps_the_previews_it_sent(sd_server, webhooks):
    events = _events_while_running(sd_server, webhooks, cancel_after=2.0)
    assert events[-1]["status"] == "canceled"
    assert events[-1].get("output")
