"""Cog's real HTTP server for predict.py, run without Docker (script/predict, script/task, the
soak, the bench and the tests)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import requests

from ..serving.runner import SLOTS

ROOT = Path(__file__).resolve().parents[2]
# Health statuses a server does not come back from by itself (a killed worker leaves UNHEALTHY).
DEAD = ("DEFUNCT", "UNHEALTHY", "SETUP_FAILED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A Cog server already up at `url` (script/serve's, or a deployed container)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def post(self, input: dict, headers: dict | None = None, **body) -> requests.Response:
        return requests.post(
            f"{self.url}/predictions", json={"input": input, **body}, headers=headers, timeout=600
        )

    def trouble(self) -> str | None:
        """Why the server cannot finish a prediction (it stopped answering, or its health says
        it never will), or None while it can."""
        try:
            status = requests.get(f"{self.url}/health-check", timeout=5).json()["status"]
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
        self.log = log
        env = {
            **os.environ,
            **(env or {}),
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
        )
        self._wait_ready()

    def trouble(self) -> str | None:
        if (code := self.process.poll()) is not None:
            return f"Cog's server exited ({code}); see {self.log.name}"
        return super().trouble()

    def _wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Cog server exited; see {self.log.name}")
            try:
                health = requests.get(f"{self.url}/health-check", timeout=2).json()
            except requests.ConnectionError:
                health = {"status": "DOWN"}
            if health["status"] == "READY":
                return
            if health["status"] == "SETUP_FAILED":
                self.stop()
                raise RuntimeError(
                    f"setup failed: {health.get('setup', {}).get('logs', '')[-2000:]}"
                )
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"Cog server not ready in {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        """Shut the server down, then kill whatever of its group is left (a worker stuck in a
        prediction, or orphaned by a server that died)."""
        try:
            requests.post(f"{self.url}/shutdown", timeout=5)
            self.process.wait(timeout=10)
        except (requests.RequestException, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is gone already
        self.process.wait()
