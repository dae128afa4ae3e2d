"""script/predict and script/serve as a first-time user meets them."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
import torch
from helpers import shapes
from PIL import Image

from sdcog.tools import cli
from sdcog.tools.cog_server import COG_PREDICTIONS, LOGS, ROOT, CogServer, RunningServer, free_port

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
    """Nothing in the temporary folder, in Cog's own prediction folders, and a log of its own."""
    image = tmp_path / "in.png"
    Image.new("RGB", (128, 128), "blue").save(image)
    before = set(os.listdir(tempfile.gettempdir()))
    cogs_before = set(os.listdir(COG_PREDICTIONS)) if COG_PREDICTIONS.exists() else set()
    logs_before = set(LOGS.glob("predict-*.log"))
    for _ in range(2):
        predict(tiny_weights, tmp_path / "out", "prompt=x", f"image=@{image}",
                "num_inference_steps=2")  # fmt: skip
    assert set(os.listdir(tempfile.gettempdir())) - before == set()
    assert set(os.listdir(COG_PREDICTIONS)) - cogs_before == set()
    assert len(set(LOGS.glob("predict-*.log")) - logs_before) == 2  # one per run


SCRIPTS = {
    "predict": ["script/predict", "-i", "prompt=x"],
    "task": ["script/task", "--dialect", "runware", "TASK"],
    "bench": ["script/bench", "WEIGHTS", "--size", "128", "--steps", "2", "--runs", "1",
              "--paths", "server", "--out", "OUT"],
}  # fmt: skip


def command_line(process: psutil.Process) -> str:
    """`process`'s command line; "" for one that has just ended (a short-lived helper, which
    may be a zombie for a moment: the CI run found one)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return ""


def started(process: subprocess.Popen) -> list[psutil.Process]:
    """The processes of Cog's server `process` has started, once it has started one."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        children = psutil.Process(process.pid).children(recursive=True)
        if any("cog.server.http" in command_line(c) for c in children):
            return children
        time.sleep(0.05)
    raise AssertionError("no Cog server started")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_interrupted_while_the_server_starts_leaves_nothing_running(
    tiny_weights, tmp_path, script, sig
):
    """A real signal to the script's process group, as the terminal sends it (Cog's server runs
    in a group of its own, which the terminal's signal does not reach)."""
    task = tmp_path / "task.json"
    task.write_text(json.dumps([{"taskType": "imageInference", "positivePrompt": "a cat",
                                 "taskUUID": "a770f077-f413-47de-9dac-be0b26a35da6",
                                 "model": "runwayml/stable-diffusion-v1-5"}]))  # fmt: skip
    given = {"OUT": str(tmp_path / "out.md"), "TASK": str(task), "WEIGHTS": str(tiny_weights)}
    command = [given.get(a, a) for a in SCRIPTS[script]]
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, "WEIGHTS_DIR": str(tiny_weights)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    server = started(process)
    os.killpg(process.pid, sig)
    process.wait(timeout=30)
    gone, alive = psutil.wait_procs(server, timeout=15)
    assert alive == [], [command_line(p) for p in alive]


def test_a_proxy_in_the_environment_is_not_used_for_the_tools_own_server(tiny_weights, tmp_path):
    """HTTP(S)_PROXY set and no NO_PROXY, as on many corporate machines: the tool reaches its
    own server, and the server its webhook, directly (the proxy here answers nothing)."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env |= {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "http_proxy": "http://127.0.0.1:9", "WEIGHTS_DIR": str(tiny_weights)}  # fmt: skip
    done = subprocess.run(
        ["script/predict", "-o", str(tmp_path), "-i", "prompt=x", "-i", "width=128",
         "-i", "height=128", "-i", "num_inference_steps=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(tmp_path.glob("out-0-seed*.png"))) == 1


def test_a_server_up_but_not_answering_is_said_as_such(tiny_weights, tmp_path):
    with open(tmp_path / "server.log", "w") as log:
        server = CogServer(tiny_weights, log)
        try:
            server.url = f"http://127.0.0.1:{free_port()}"  # where nothing answers
            with pytest.raises(TimeoutError) as raised:
                server._wait_ready(timeout=1)
        finally:
            server.url = f"http://127.0.0.1:{server.port}"
            server.stop()
    assert re.match(r"Cog's server \(pid \d+\) is running but not ready at http://127.0.0.1:\d+ "
                    r"after 1 s \(ConnectionError: ", str(raised.value))  # fmt: skip


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
        # predict()'s own rules on the request, by the same code, before a server starts
        ("width=1001", "-i width: 1001 is not a multiple of 8 (one latent per 8x8 pixels); take "
                       "1000 or 1008"),
        ("base_model=../x", "-i base_model: '../x' is not a Hugging Face owner/repo"),
        ("mask=@README.md", "-i mask: a mask needs an image to inpaint; give image as well"),
        ("lora_scales=0.5", "-i lora_scales: give one scale per lora_weights entry (got 1 for 0)"),
        # AUTOMATIC1111's and civitai's names, said as ours
        ("steps=30", "-i steps: no such input (AUTOMATIC1111's name; here it is "
                     "num_inference_steps)"),
        ("cfg_scale=7", "(AUTOMATIC1111's name; here it is guidance_scale)"),
        ("sampler=Euler a", "(AUTOMATIC1111's name; here it is scheduler)"),
        ("sampler_name=Euler a", "(AUTOMATIC1111's name; here it is scheduler)"),
        ("denoising_strength=0.5", "(AUTOMATIC1111's name; here it is prompt_strength)"),
        ("batch_size=2", "(AUTOMATIC1111's name; here it is num_outputs)"),
        ("negative=blurry", "(AUTOMATIC1111's name; here it is negative_prompt)"),
    ],
)  # fmt: skip
def test_choices_and_ranges_are_checked_before_a_server_starts(tmp_path, argument, message):
    start = time.monotonic()
    with pytest.raises(SystemExit) as raised:  # no weights there: no server could start
        cli.main(["--weights", str(tmp_path / "none"), "-i", "prompt=x", "-i", argument])
    assert message in str(raised.value) and time.monotonic() - start < 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine takes seed_device=cuda")
def test_cuda_noise_on_a_cpu_is_refused_before_a_server_starts(tmp_path):
    with pytest.raises(SystemExit) as raised:
        cli.main(["--weights", str(tmp_path / "none"), "-i", "prompt=x", "-i", "seed_device=cuda"])
    assert str(raised.value).startswith("-i seed_device: cuda draws the noise a CUDA generator")


def test_a_mistake_is_said_before_tiny_weights_are_chosen_or_written(tmp_path):
    """script/predict with no real weights: a typo is refused before script/choose-weights
    runs (which writes tiny weights when they are missing or stale, and says so)."""
    done = subprocess.run(
        ["script/predict", "-i", "prompt=x", "-i", "steps=30"], cwd=ROOT, capture_output=True,
        text=True, timeout=120, env={**os.environ, "WEIGHTS_DIR": str(tmp_path / "none")},
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().endswith("here it is num_inference_steps)")
    assert "NOTE: no real weights" not in done.stderr


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
