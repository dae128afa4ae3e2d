"""script/serve's supervisor against Cog's real server: it recovers from a failed setup, a killed
worker and leaked slots, and leaves nothing behind when stopped."""

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
from loopback import UploadReceiver, dead_proxy_env
from PIL import Image

from sdcog.serving.runner import SLOTS
from sdcog.tools.cog_server import ROOT, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

SMALL = {"prompt": "x", "width": 128, "height": 128, "num_inference_steps": 2}


def wait_for(url: str, wanted: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        try:
            status = requests.get(f"{url}/health-check", timeout=2).json()["status"]
        except requests.RequestException:
            status = "DOWN"
        if status == wanted:
            return
        time.sleep(0.2)
    raise AssertionError(f"health {status}, not {wanted}, after {timeout} s")


def predicts(url: str) -> bool:
    answer = requests.post(f"{url}/predictions", json={"input": SMALL}, timeout=120)
    return answer.status_code == 200 and answer.json()["status"] == "succeeded"


def serve(env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdcog.tools.serve"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


@pytest.fixture
def supervised(tmp_path, make_weights):
    """script/serve's supervisor over a weights folder that is empty at first; its env too."""
    weights = tmp_path / "weights"
    weights.mkdir()
    port = free_port()
    # A proxy and no NO_PROXY, as on many corporate machines: the supervisor's health checks
    # must not go through it (they did, and it could see no failed setup, no dead worker).
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    proxies = {k: v for k, v in dead_proxy_env().items() if k.lower() != "no_proxy"}
    env |= {**proxies, "PORT": str(port), "WEIGHTS_DIR": str(weights), "SDCOG_WEDGE_S": "3",
            "PYTHONPATH": str(ROOT)}  # fmt: skip
    log = open(tmp_path / "serve.log", "w+")
    process = serve(env, log)
    yield process, f"http://127.0.0.1:{port}", weights, make_weights("sd"), log, env
    if process.poll() is None:
        process.kill()
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
    log.close()


def restarts(log) -> list[str]:
    log.seek(0)
    return [line.split(": ", 2)[2].strip() for line in log if "restarting Cog's server" in line]


def test_the_supervisor_recovers_and_cleans_up(supervised):
    process, url, weights, tiny, log, _ = supervised
    # 1. Setup fails (no weights yet); once they are there, a retry comes up.
    wait_for(url, "SETUP_FAILED")
    time.sleep(1)
    for entry in tiny.iterdir():
        (weights / entry.name).symlink_to(entry)
    wait_for(url, "READY")
    assert predicts(url)
    assert restarts(log)[0] == "its setup failed"
    server = psutil.Process(process.pid).children()[0]
    workdir = Path(server.environ()["TMPDIR"])

    # 2. The worker is killed: Cog says UNHEALTHY for good; the supervisor restarts it.
    for worker in server.children(recursive=True):
        worker.kill()
    wait_for(url, "UNHEALTHY", timeout=10)
    wait_for(url, "READY")
    assert predicts(url)
    assert restarts(log)[-1] == "it is UNHEALTHY"

    # 3. Ids Cog cannot use as folder names leak every slot; predict() saw none of them.
    for n in range(SLOTS):
        requests.post(f"{url}/predictions", json={"id": "x" * 300 + str(n), "input": SMALL},
                      timeout=60)  # fmt: skip
    assert requests.post(f"{url}/predictions", json={"input": SMALL}, timeout=60).status_code == 409
    wait_for(url, "READY", timeout=60)
    assert predicts(url)
    assert restarts(log)[-1].startswith("every slot busy, no prediction running, for 3 s")

    # 4. SIGTERM: the server and its worker stop, the temporary folder goes.
    group = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in group)  # fmt: skip
    assert not workdir.exists()
    shutil.rmtree(weights)


def test_a_closed_terminal_or_a_killed_supervisor_leaves_nothing_running(supervised):
    process, url, weights, tiny, log, env = supervised
    for entry in tiny.iterdir():
        (weights / entry.name).symlink_to(entry)

    def started(supervisor: subprocess.Popen) -> tuple[psutil.Process, Path]:
        wait_for(url, "READY")
        assert predicts(url)
        [server] = psutil.Process(supervisor.pid).children()
        workdir = Path(server.environ()["TMPDIR"])
        assert any(workdir.glob("sdcog-*/out-0-*.png"))  # the last prediction's image
        return server, workdir

    # SIGHUP (the terminal closed): stopped as by SIGTERM, the folder gone.
    server, workdir = started(process)
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=60) == 0
    assert not psutil.pid_exists(server.pid) and not workdir.exists()
    # What it printed is readable, and a clean stop is said as one: Cog's JSON lines, their
    # time, level and message; no worker "crashed" when it was stopped.
    log.seek(0)
    printed = log.read()
    assert re.search(r"^\d\d:\d\d:\d\d INFO pred_\w+ output 0: seed \d+$", printed, re.M), printed
    assert '{"timestamp"' not in printed and "Control channel closed" not in printed
    assert "Worker shutting down" in printed

    # Killed outright: the server goes with it, its folder at the next start.
    killed = serve(env, log)
    server, workdir = started(killed)
    killed.kill()
    killed.wait()
    psutil.Process(server.pid).wait(timeout=60)
    assert workdir.exists()
    again = serve(env, log)
    try:
        started(again)
        assert not workdir.exists()
    finally:
        again.send_signal(signal.SIGTERM)
        assert again.wait(timeout=60) == 0


def test_outputs_go_to_an_upload_url(make_weights, tmp_path):
    """script/serve hands Cog's own options on: with --upload-url each image is PUT there under
    its unique name, and the answer holds the URLs (for clients without GET /predictions/{id},
    which Cog has not, and who want no data URIs)."""
    bucket = UploadReceiver()
    port = free_port()
    env = {**os.environ, **dead_proxy_env(), "PORT": str(port),
           "WEIGHTS_DIR": str(make_weights("sd")), "PYTHONPATH": str(ROOT)}  # fmt: skip
    with open(tmp_path / "serve.log", "w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sdcog.tools.serve", "--upload-url", bucket.url],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(url, "READY")
            body = {"input": {**SMALL, "num_outputs": 2, "seed": 7}}
            answer = requests.post(f"{url}/predictions", json=body, timeout=120).json()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        bucket.httpd.shutdown()
    assert answer["status"] == "succeeded", answer
    paths = sorted(bucket.files)
    assert [re.sub(r"-[0-9a-f]{8}\.png$", "", p) for p in paths] == [
        "/uploads/out-0-seed7", "/uploads/out-1-seed8",
    ]  # fmt: skip
    assert sorted(answer["output"]) == [f"http://127.0.0.1:{bucket.httpd.server_port}{p}"
                                        for p in paths]  # fmt: skip
    for path in paths:
        assert Image.open(io.BytesIO(bucket.files[path])).size == (128, 128)
