"""script/predict and script/serve as a first-time user meets them."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests
from helpers import shapes
from PIL import Image

from sdcog.tools import cli
from sdcog.tools.cog_server import ROOT, CogServer, RunningServer, free_port

pytestmark = pytest.mark.server


def predict(weights: Path, out: Path, *inputs: str) -> list[str]:
    cli.main(["--weights", str(weights), "-o", str(out), *(a for i in inputs for a in ("-i", i))])
    return sorted(p.name for p in out.iterdir())


def test_local_names_keep_seeds_and_runs_never_overwrite(tiny_weights, tmp_path, capsys):
    small = ["prompt=a cat", "seed=5", "num_outputs=2", "width=128", "height=128"]
    first = predict(tiny_weights, tmp_path, *small, "num_inference_steps=2")
    assert [re.sub(r"-\d{8}-\d{6}", "", n) for n in first] == [
        "out-0-seed5.png",
        "out-1-seed6.png",
    ]
    second = predict(tiny_weights, tmp_path, *small, "num_inference_steps=3")  # same second
    assert len(second) == 4 and set(first) < set(second)
    assert "output 1: seed 6" in capsys.readouterr().err


def test_logs_arrive_while_the_prediction_runs(tiny_weights, tmp_path, monkeypatch):
    writes: list[tuple[float, str]] = []

    class Recorder:
        def write(self, text: str) -> None:
            writes.append((time.monotonic(), text))

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Recorder())
    predict(tiny_weights, tmp_path, "prompt=x", "seed=1", "num_inference_steps=150")
    logs = [(t, text) for t, text in writes if "it/s" in text or "%|" in text]
    assert len(logs) >= 2, "progress came in one piece, after the end"
    assert logs[-1][0] - logs[0][0] > 0.3


def test_a_run_leaves_nothing_in_the_temporary_folder(tiny_weights, tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (128, 128), "blue").save(image)
    before = set(os.listdir(tempfile.gettempdir()))
    predict(tiny_weights, tmp_path / "out", "prompt=x", f"image=@{image}", "num_inference_steps=2")
    assert set(os.listdir(tempfile.gettempdir())) - before == set()


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("width=abc", "-i width=abc: width takes a number (integer)"),
        ("guidance_scale=lots", "-i guidance_scale=lots: guidance_scale takes a number (number)"),
        ("image=@missing.png", "-i image=@missing.png: no file missing.png"),
        ("colour=red", "-i colour: no such input; inputs: prompt, negative_prompt"),
        ("prompt", "-i 'prompt': expected NAME=VALUE"),
    ],
)
def test_bad_arguments_are_one_line_not_a_traceback(tiny_weights, tmp_path, argument, message):
    with pytest.raises(SystemExit) as exit:
        predict(tiny_weights, tmp_path, argument)
    assert str(exit.value).startswith(message)


def test_failures_show_the_message_once(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.delenv("ALLOW_LOCAL_INPUT_PATHS")  # the default policy, for the server too
    with pytest.raises(SystemExit) as exit:  # refused by the schema before a server starts
        predict(tiny_weights, tmp_path, "prompt=x", "width=100")
    assert str(exit.value).startswith("-i width: 100 is less than the minimum of 128")
    assert "\n" not in str(exit.value)
    with pytest.raises(SystemExit) as exit:
        predict(tiny_weights, tmp_path, "prompt=x", "image=/etc/hostname")
    assert str(exit.value) == (
        "prediction failed: image: '/etc/hostname' is a path on the server; send the file as an "
        "http(s) URL or a data: URI (script/predict: -i NAME=@file)"
    )


def test_serve_without_weights_falls_back_to_tiny_weights_as_predict_does(tmp_path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "WEIGHTS_DIR": str(tmp_path / "none")}
    with open(tmp_path / "serve.log", "w+") as log:
        server = subprocess.Popen([ROOT / "script/serve"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 300
            status = None
            while time.monotonic() < deadline and status != "READY":
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                try:
                    url = f"http://127.0.0.1:{port}/health-check"
                    status = requests.get(url, timeout=2).json()["status"]
                except requests.ConnectionError:
                    time.sleep(0.5)
            assert status == "READY"
            body = {"input": {"prompt": "x", "width": 128, "height": 128, "num_inference_steps": 1}}
            answer = requests.post(f"http://127.0.0.1:{port}/predictions", json=body, timeout=60)
            assert answer.json()["status"] == "succeeded"
        finally:
            server.terminate()
            server.wait(timeout=30)
    assert "TINY RANDOM weights" in (tmp_path / "serve.log").read_text()


def test_previews_are_written_beside_the_images(tiny_weights, tmp_path):
    names = predict(tiny_weights, tmp_path, "prompt=a cat", "seed=5", "width=128", "height=128",
                    "num_inference_steps=4", "preview_every=2")  # fmt: skip
    assert [re.sub(r"-\d{8}-\d{6}", "", n) for n in names] == [
        "out-0-seed5.png", "preview-0-step2.jpg", "preview-0-step4.jpg",
    ]  # fmt: skip


def test_control_maps_are_written_beside_the_images(tiny_weights, tmp_path):
    photo = tmp_path / "photo.png"
    shapes((128, 128)).save(photo)
    names = predict(tiny_weights, tmp_path / "out", "prompt=a cat", "seed=5", "width=128",
                    "height=128", "num_inference_steps=2", "controlnet_1=canny",
                    f"controlnet_1_image=@{photo}", "return_control_maps=true")  # fmt: skip
    assert [re.sub(r"-\d{8}-\d{6}", "", n) for n in names] == [
        "control-1-canny.png", "out-0-seed5.png",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("width=4000", "-i width: 4000 is greater than the maximum of 2048"),
        ("scheduler=Euler b", "-i scheduler: 'Euler b' is not one of"),
        ("guidance_scale=99", "-i guidance_scale: 99.0 is greater than the maximum of 30"),
        ("disable_safety_checker=ture", "disable_safety_checker takes true or false"),
        ("num_inference_stepz=3", "no such input (did you mean num_inference_steps?)"),
    ],
)
def test_choices_and_ranges_are_checked_before_a_server_starts(tmp_path, argument, message):
    start = time.monotonic()
    with pytest.raises(SystemExit) as raised:  # no weights there: no server could start
        cli.main(["--weights", str(tmp_path / "none"), "-i", "prompt=x", "-i", argument])
    assert message in str(raised.value) and time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("seen_as", "reason"),
    [(RunningServer, "stopped answering (ConnectionError)"), (CogServer, "server exited (-9)")],
)
def test_a_server_killed_mid_prediction_ends_the_wait(tiny_weights, tmp_path, seen_as, reason):
    """script/predict (its own server) and script/task --url (a server elsewhere) stop waiting
    for a prediction whose server was killed. (A killed worker needs nothing: Cog answers the
    prediction `failed: Worker crashed`.)"""
    with open(tmp_path / "server.log", "w") as log:
        server = CogServer(tiny_weights, log)
        try:
            threading.Timer(3, os.kill, (server.process.pid, signal.SIGKILL)).start()
            client = RunningServer(server.url) if seen_as is RunningServer else server
            start = time.monotonic()
            with pytest.raises(SystemExit) as raised:
                cli.run(client, {"prompt": "x", "num_inference_steps": 500, "width": 512})
            assert time.monotonic() - start < 3 + 3 * cli.LIVENESS_S
        finally:
            server.stop()
    assert str(raised.value).startswith("the prediction was lost: ")
    assert reason in str(raised.value)


def test_a_dead_url_is_one_line_not_a_traceback(tmp_path):
    with pytest.raises(SystemExit) as raised:
        cli.run(RunningServer(f"http://127.0.0.1:{free_port()}"), {"prompt": "x"})
    assert str(raised.value).startswith("no Cog server answers at http://127.0.0.1:")
