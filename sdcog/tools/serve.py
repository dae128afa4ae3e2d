"""script/serve: Cog's HTTP server for this model, supervised.

Cog 0.23.1 can be left unable to serve until it is restarted (docs/security-and-limits.md, Security
notes): a killed worker leaves it UNHEALTHY for good, prediction ids it cannot use as folder names
leak their slots until every request gets 409, and a setup that failed stays failed. The supervisor
runs the server in a process group of its own, asks /health-check every second and restarts it:
- when the server exits;
- when it says UNHEALTHY or DEFUNCT twice in a row;
- when its setup failed, after a pause that doubles from 2 s up to a minute;
- when every slot is busy while no prediction is inside predict() for SDCOG_WEDGE_S seconds
  (default 60), which predict() reports through the file SDCOG_STATUS_FILE.

SIGTERM, SIGINT or SIGHUP (the terminal closed) stops the server (SIGTERM, then SIGKILL after
STOP_GRACE_S) and exits; a supervisor killed outright takes the server with it (the kernel
sends it SIGTERM). The server gets a temporary folder of its own (TMPDIR: the last predictions'
images), removed when the supervisor exits, or at the next start if it was killed; Cog's own
per-prediction folders (/tmp/coglet/predictions, which it never removes) are pruned once an
hour old.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from ..serving.runner import SLOTS
from .cog_server import COG_PREDICTIONS, die_with_parent, direct, without_proxy_for_loopback

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 1.0
STOP_GRACE_S = 30.0
PRUNE_AFTER_S = 3600.0
BAR_EVERY_S = 5.0
WORKDIR_PREFIX = "sdcog-serve-"


def say(message: str) -> None:
    print(f"script/serve: {message}", file=sys.stderr, flush=True)


class Supervisor:
    def __init__(
        self, host: str, port: int, workdir: Path, wedge_s: float, cog_args: list[str]
    ) -> None:
        self.url = f"http://{host}:{port}"
        self.command = [sys.executable, "-m", "cog.server.http", "--host", host, *cog_args]
        self.status_file = workdir / "status.json"
        self.wedge_s = wedge_s
        self.http = direct()
        self.env = {
            **without_proxy_for_loopback(dict(os.environ)),
            "PORT": str(port),
            "TMPDIR": str(workdir),
            "SDCOG_STATUS_FILE": str(self.status_file),
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            # What `cog build` bakes in from predict()'s @concurrent(max=...).
            "COG_MAX_CONCURRENCY": str(SLOTS),
            # The server starts its worker as a bare `python`: this interpreter must come first.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.stopping = threading.Event()
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    def run(self) -> int:
        backoff, unhealthy, wedged_since = 2.0, 0, None
        self._start()
        while not self.stopping.wait(POLL_S):
            status = self._health()
            reason = None
            if self.process.poll() is not None:
                reason = f"it exited with code {self.process.returncode}"
            elif status in ("UNHEALTHY", "DEFUNCT"):
                unhealthy += 1
                reason = f"it is {status}" if unhealthy >= 2 else None
            elif status == "SETUP_FAILED":
                say(f"setup failed; trying again in {backoff:g} s")
                if self.stopping.wait(backoff):
                    break
                backoff = min(backoff * 2, 60.0)
                reason = "its setup failed"
            elif status == "BUSY" and self._predictions() == 0:
                wedged_since = wedged_since or time.monotonic()
                if time.monotonic() - wedged_since > self.wedge_s:
                    reason = f"every slot busy, no prediction running, for {self.wedge_s:g} s"
            if status != "BUSY":
                wedged_since = None
            if status == "READY":
                backoff, unhealthy = 2.0, 0
            if reason:
                say(f"restarting Cog's server: {reason}")
                self._stop(grace=5.0)
                self.restarts += 1
                unhealthy, wedged_since = 0, None
                self._start()
            _prune(COG_PREDICTIONS, PRUNE_AFTER_S)
        self._stop(grace=STOP_GRACE_S, graceful=True)
        return 0

    def _start(self) -> None:
        self.status_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=self.env,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops the server
            preexec_fn=die_with_parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=_relay, args=(self.process.stdout,), daemon=True).start()

    def _stop(self, grace: float, graceful: bool = False) -> None:
        """SIGTERM to the server's process group (server and worker); SIGKILL after `grace`.
        `graceful`: Cog's own /shutdown first, which stops its worker cleanly (SIGTERM has the
        server say "Control channel closed (worker crashed?)" about a worker it stopped)."""
        if graceful:
            try:
                self.http.post(f"{self.url}/shutdown", timeout=5)
                self.process.wait(timeout=grace)
            except (requests.RequestException, subprocess.TimeoutExpired):
                pass
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # the worker, should it have outlived the server
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _health(self) -> str:
        try:
            return self.http.get(f"{self.url}/health-check", timeout=5).json()["status"]
        except (requests.RequestException, ValueError, KeyError):
            return "DOWN"

    def _predictions(self) -> int | None:
        """Predictions inside predict(), as predict() reports them (None: not known yet)."""
        try:
            return json.loads(self.status_file.read_text())["predictions"]
        except (OSError, ValueError, KeyError):
            return None


class Readable:
    """Cog's log lines (JSON, one per event, a progress bar's every redraw among them) as a
    person reads them: time, level, the prediction, the message; a prediction's progress bar
    every BAR_EVERY_S seconds and when it completes. Lines that are not JSON pass as they are."""

    BAR = re.compile(r"^\s*\d+%\|")

    def __init__(self) -> None:
        self.bars: dict[str, float] = {}  # prediction -> when its bar was last shown

    def __call__(self, line: str) -> str | None:
        try:
            record = json.loads(line)
        except ValueError:
            return line.rstrip() or None
        if not isinstance(record, dict):
            return line.rstrip()
        fields = record.get("fields") or {}
        message = str(fields.get("message", "")).strip()
        prediction = str(fields.get("prediction_id") or "")
        if not message:
            return None
        if self.BAR.match(message):
            now = time.monotonic()
            if (
                not message.lstrip().startswith("100%")
                and now - self.bars.get(prediction, 0) < BAR_EVERY_S
            ):
                return None
            self.bars[prediction] = now
        when = str(record.get("timestamp", ""))[11:19]
        return " ".join(filter(None, [when, str(record.get("level", "")), prediction, message]))


def _relay(stream) -> None:
    """The server's output to our stderr, readable (Readable)."""
    readable = Readable()
    for line in stream:
        text = readable(line.decode(errors="replace"))
        if text is not None:
            print(text, file=sys.stderr, flush=True)


def _sweep_orphans(tmp: Path) -> None:
    """The temporary folders of supervisors that were killed (their pid is in the name)."""
    for folder in tmp.glob(f"{WORKDIR_PREFIX}*-*"):
        pid = folder.name.removeprefix(WORKDIR_PREFIX).split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _prune(folder: Path, older_than_s: float) -> None:
    """Cog's per-prediction folders (empty inputs/ and outputs/) of predictions long over."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    cutoff = time.time() - older_than_s
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="script/serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    args, cog_args = parser.parse_known_args(argv)  # the rest goes to Cog (--upload-url, ...)
    port = int(os.environ.get("PORT", 5000))
    wedge_s = float(os.environ.get("SDCOG_WEDGE_S", 60))
    _sweep_orphans(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-") as workdir:
        supervisor = Supervisor(args.host, port, Path(workdir), wedge_s, cog_args)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: supervisor.stopping.set())
        say(f"serving {supervisor.url} (Cog's server, supervised)")
        return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
