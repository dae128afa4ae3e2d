"""Cog's real HTTP server for predict.py, run without Docker (script/predict, script/task, the
soak, the bench and the tests).

What the tools start, they stop, whenever they end: the server runs in a process group of its
own (so a Ctrl-C at the terminal reaches the tool, which cancels and stops it), is stopped if the
tool is interrupted while it starts, gets SIGTERM from the kernel if the tool dies outright, and
a closed terminal (SIGHUP) or SIGTERM ends a tool as Ctrl-C does. The tools reach their own
server on 127.0.0.1 directly, never through a proxy from the environment, and the server reaches
theirs (webhooks) the same way."""

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import requests

from ..serving.runner import SLOTS

ROOT = Path(__file__).resolve().parents[2]
# Health statuses a server does not come back from by itself (a killed worker leaves UNHEALTHY).
DEAD = ("DEFUNCT", "UNHEALTHY", "SETUP_FAILED")
LOOPBACK = "127.0.0.1,localhost,::1"
# Where Cog 0.23.1 makes a folder for each prediction (whatever TMPDIR says), and never removes it.
COG_PREDICTIONS = Path("/tmp/coglet/predictions")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def direct() -> requests.Session:
    """HTTP to our own loopback servers: never through HTTP(S)_PROXY from the environment (on a
    machine with a proxy and no NO_PROXY, requests would send 127.0.0.1 to the proxy)."""
    session = requests.Session()
    session.trust_env = False
    return session


def without_proxy_for_loopback(env: dict[str, str]) -> dict[str, str]:
    """`env` with loopback added to NO_PROXY: the server's webhooks to our tools go direct, and
    whatever else it fetches keeps the environment's proxy."""
    given = env.get("NO_PROXY") or env.get("no_proxy") or ""
    no_proxy = f"{given},{LOOPBACK}" if given else LOOPBACK
    return {**env, "NO_PROXY": no_proxy, "no_proxy": no_proxy}


def die_with_parent() -> None:
    """In a server's process, before it starts: SIGTERM when the tool that started it dies,
    however it dies (Linux)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def interrupt_on_hangup() -> None:
    """A closed terminal (SIGHUP) or SIGTERM ends a tool as Ctrl-C does (KeyboardInterrupt), so
    it cancels its prediction and stops its server on the way out."""
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)


LOGS = ROOT / ".cache/logs"
KEEP_LOGS = 20


def run_log(tool: str) -> Path:
    """The server log of this run alone (two runs at once never write one file); the oldest
    beyond KEEP_LOGS are removed."""
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in sorted(LOGS.glob("*.log"), key=lambda p: p.stat().st_mtime)[: -KEEP_LOGS + 1]:
        old.unlink(missing_ok=True)
    handle, path = tempfile.mkstemp(
        prefix=f"{tool}-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".log", dir=LOGS
    )
    os.close(handle)
    return Path(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A Cog server already up at `url` (script/serve's, or a deployed container)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = direct()

    def post(self, input: dict, headers: dict | None = None, **body) -> requests.Response:
        return self.http.post(
            f"{self.url}/predictions", json={"input": input, **body}, headers=headers, timeout=600
        )

    def trouble(self) -> str | None:
        """Why the server cannot finish a prediction (it stopped answering, or its health says
        it never will), or None while it can."""
        try:
            status = self.http.get(f"{self.url}/health-check", timeout=5).json()["status"]
        except (requests.RequestException, ValueError, KeyError) as e:
            return f"the Cog server at {self.url} stopped answering ({type(e).__name__})"
        if status in DEAD:
            return f"the Cog server at {self.url} is {status}"
        return None


class CogServer(RunningServer):
    """`python -m cog.server.http` for predict.py on 127.0.0.1, as the container runs it."""

    def __init__(
        self,
        weights: Path,
        log: IO[str],
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.predictions: list[str] = []  # their folders go when the server stops
        self.log = log
        env = {
            **without_proxy_for_loopback({**os.environ, **(env or {})}),
            "PORT": str(self.port),
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            # `cog build` bakes this in from predict()'s @concurrent(max=...); the server reads
            # only the variable.
            "COG_MAX_CONCURRENCY": str(SLOTS),
            "WEIGHTS_DIR": str(weights),
            # The server starts its worker as a bare `python`: this interpreter must come first.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() takes the worker with it
            preexec_fn=die_with_parent,
        )
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C, SIGHUP, a failed setup: nothing is left running
            self.stop()
            raise

    def post(self, input: dict, headers: dict | None = None, **body) -> requests.Response:
        response = super().post(input, headers, **body)
        try:
            prediction = response.json().get("id")
        except ValueError:
            prediction = None
        if isinstance(prediction, str) and re.fullmatch(r"[\w-]+", prediction):
            self.predictions.append(prediction)
        return response

    def trouble(self) -> str | None:
        if (code := self.process.poll()) is not None:
            return f"Cog's server exited ({code}); see {self.log.name}"
        return super().trouble()

    def _wait_ready(self, timeout: float = 300) -> None:
        deadline, last = time.monotonic() + timeout, "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Cog server exited; see {self.log.name}")
            try:
                health = self.http.get(f"{self.url}/health-check", timeout=2).json()
            except (requests.RequestException, ValueError) as e:
                health, last = {"status": "DOWN"}, f"{type(e).__name__}: {str(e)[:200]}"
            if health.get("status") == "READY":
                return
            if health.get("status") == "SETUP_FAILED":
                raise RuntimeError(
                    f"setup failed: {health.get('setup', {}).get('logs', '')[-2000:]}"
                )
            if "status" in health and health["status"] != "DOWN":
                last = f"it says {health['status']}"
            time.sleep(0.25)
        raise TimeoutError(
            f"Cog's server (pid {self.process.pid}) is running but not ready at {self.url} "
            f"after {timeout:g} s ({last}); see {self.log.name}"
        )

    def stop(self) -> None:
        """Shut the server down, then kill whatever of its group is left (a worker stuck in a
        prediction, or orphaned by a server that died)."""
        try:
            self.http.post(f"{self.url}/shutdown", timeout=5)
            self.process.wait(timeout=10)
        except (requests.RequestException, subprocess.TimeoutExpired):
            pass
        finally:  # a second Ctrl-C while it shuts down still leaves nothing running
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group is gone already
            self.process.wait()
            for prediction in self.predictions:
                shutil.rmtree(COG_PREDICTIONS / prediction, ignore_errors=True)
