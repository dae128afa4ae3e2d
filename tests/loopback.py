"""Real servers on 127.0.0.1 for the tests: files (and Hugging Face's API) to download, webhooks
to receive, and a dead proxy that catches anything meant for elsewhere."""

import hashlib
import io
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty
from urllib.parse import urlsplit

from PIL import Image

from sdcog.tools.cli import Webhook


class DeadProxy:
    """A listener on 127.0.0.1 that counts and drops every connection: the HTTP(S) proxy of every
    server under test, so a URL that slips past netguard fails here, on this machine, and shows
    in `connections` (`requests` holds the first line of each: `CONNECT host:443 HTTP/1.1`).
    Loopback addresses bypass it (NO_PROXY)."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[str] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

        def accept() -> None:
            while True:
                try:
                    connection, _ = self.listener.accept()
                except OSError:
                    return
                self.connections += 1
                connection.settimeout(1)
                try:
                    self.requests.append(connection.recv(4096).split(b"\r\n")[0].decode("latin-1"))
                except OSError:
                    self.requests.append("")
                connection.close()

        threading.Thread(target=accept, daemon=True).start()


DEAD_PROXY = DeadProxy()


def dead_proxy_env() -> dict[str, str]:
    env = {
        "HTTP_PROXY": DEAD_PROXY.url,
        "HTTPS_PROXY": DEAD_PROXY.url,
        "NO_PROXY": "127.0.0.1,localhost,::1",
    }
    return {**env, **{name.lower(): value for name, value in env.items()}}


class FileServer:
    """A real HTTP server on 127.0.0.1 serving files from a folder, recording each request path.
    Hugging Face references work too: HF_ENDPOINT points here, and files laid out as
    api/models/<owner>/<repo> (JSON) and <owner>/<repo>/resolve/main/<file> answer them.
    `redirects` maps a path to the Location it answers with 302; `dispositions` a path to the
    file name its Content-Disposition header gives; `statuses` a path to an error status it
    answers with; `trickles` a path to the seconds between the bytes of its answer (headers
    and body, one byte at a time); `authorizations` records each request's Authorization header
    (None without one). `host` "::1" serves on IPv6 loopback."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = root
        self.requests: list[str] = []
        self.redirects: dict[str, str] = {}
        self.dispositions: dict[str, str] = {}
        self.statuses: dict[str, int] = {}
        self.trickles: dict[str, float] = {}
        self.authorizations: list[tuple[str, str | None]] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                server.authorizations.append((self.path, self.headers.get("Authorization")))
                if self.path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if status := server.statuses.get(self.path):
                    self.send_error(status)
                    return
                if delay := server.trickles.get(self.path):
                    self._trickle(delay)
                    return
                super().do_GET()

            def _trickle(self, delay: float) -> None:
                body = (server.root / self.path.lstrip("/")).read_bytes()
                answer = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
                for byte in answer:
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return  # the client has gone
                    time.sleep(delay)

            def end_headers(self):
                if name := server.dispositions.get(self.path):
                    self.send_header("Content-Disposition", f'attachment; filename="{name}"')
                super().end_headers()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.httpd = Server((host, port), Handler)
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"

    def put_image(self, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return self.put(f"images/{len(self.requests)}-{id(image)}.png", buffer.getvalue())

    def count(self, name: str) -> int:
        return sum(1 for path in self.requests if path.endswith(name))


class UploadReceiver:
    """A bucket on 127.0.0.1 for Cog's --upload-url: every PUT's path and body, answered 201."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        files = self.files

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):  # noqa: N802
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while size := int(self.rfile.readline().strip(), 16):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                files[self.path] = body
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/uploads/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


class WebhookReceiver(Webhook):
    """script/predict's webhook server, with waiting helpers for tests."""

    TERMINAL = ("succeeded", "failed", "canceled")

    def next(self, timeout: float = 60) -> dict:
        try:
            return self.events.get(timeout=timeout)
        except Empty:
            raise AssertionError(f"no webhook within {timeout} s") from None

    def final(self) -> dict:
        """Events up to the one that ends the prediction."""
        while (event := self.next())["status"] not in self.TERMINAL:
            pass
        return event


class HubServer:
    """A Hugging Face-shaped endpoint on 127.0.0.1 (HF_ENDPOINT points here) serving repositories
    from `root`/<owner>/<repo>/, as huggingface_hub reads the real one: the model API (with
    its commit and file list) and HEAD/GET of `resolve` URLs with the commit and ETag headers.
    Each repository has one commit; `main` and that commit resolve to it. Errors carry the
    hub's X-Error-Code. The listing gives each file's size when asked (`?blobs=true`), as the
    hub does. `requests` records (method, path) of every request; `delays` maps a path to
    seconds to wait before answering it; `authorizations` each request's path and Authorization
    header (None without one). Hostile answers, by path: `redirects` a resolve path to the
    Location its 302 gives (with the file's metadata headers, as the hub's redirects to its CDN
    carry them); `endless` a resolve path to seconds between the 64 KiB chunks of a body that
    never ends (no Content-Length); `headers` a path to headers added to its answer;
    `listings` a repository to fields replacing those of its API answer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str]] = []
        self.delays: dict[str, float] = {}
        self.authorizations: list[tuple[str, str | None]] = []
        self.redirects: dict[str, str] = {}
        self.endless: dict[str, float] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.listings: dict[str, dict] = {}
        self.endless_bytes = 0  # sent by endless answers, in all
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                self._answer(body=True)

            def do_HEAD(self):  # noqa: N802
                self._answer(body=False)

            def _answer(self, body: bool) -> None:
                parts = urlsplit(self.path)
                path = parts.path
                hub.requests.append((self.command, path))
                hub.authorizations.append((path, self.headers.get("Authorization")))
                time.sleep(hub.delays.get(path, 0))
                if m := re.fullmatch(r"/api/models/([\w.-]+/[\w.-]+)(?:/revision/([^/]+))?", path):
                    return self._api(m[1], m[2] or "main", "blobs=true" in parts.query.lower())
                if m := re.fullmatch(r"/([\w.-]+/[\w.-]+)/resolve/([^/]+)/(.+)", path):
                    return self._file(m[1], m[2], m[3], body)
                self._error(404, "EntryNotFound")

            def _api(self, repo: str, revision: str, sizes: bool) -> None:
                folder = hub.root / repo
                if not folder.is_dir():
                    return self._error(404, "RepoNotFound")
                if revision not in ("main", hub.commit(repo)):
                    return self._error(404, "RevisionNotFound")
                files = sorted(p for p in folder.rglob("*") if p.is_file())
                siblings = [
                    {
                        "rfilename": str(p.relative_to(folder)),
                        **({"size": p.stat().st_size} if sizes else {}),
                    }
                    for p in files
                ]
                info = {"id": repo, "modelId": repo, "sha": hub.commit(repo),
                        "siblings": siblings, **hub.listings.get(repo, {})}  # fmt: skip
                self._send(200, json.dumps(info).encode(), "application/json", {})

            def _file(self, repo: str, revision: str, name: str, body: bool) -> None:
                path = hub.root / repo / name
                if revision not in ("main", hub.commit(repo)):
                    return self._error(404, "RevisionNotFound")
                if not path.is_file():
                    return self._error(404, "EntryNotFound")
                data = path.read_bytes()
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                headers = {"X-Repo-Commit": hub.commit(repo), "ETag": etag,
                           **hub.headers.get(self.path, {})}  # fmt: skip
                if location := hub.redirects.get(self.path):
                    headers |= {"Location": location, "X-Linked-Etag": etag,
                                "X-Linked-Size": str(len(data))}  # fmt: skip
                    return self._send(302, b"", "text/plain", headers)
                if self.path in hub.endless:
                    return self._endless(hub.endless[self.path], headers, body)
                self._send(200, data if body else b"", "application/octet-stream", headers,
                           length=len(data))  # fmt: skip

            def _endless(self, pause: float, headers: dict[str, str], body: bool) -> None:
                self.close_connection = True  # no length: the body ends when the socket does
                self.send_response(200)
                for key, value in {**headers, "Connection": "close"}.items():
                    self.send_header(key, value)
                self.end_headers()
                while body:
                    try:
                        self.wfile.write(b"x" * 65536)
                    except OSError:
                        return  # the client has gone
                    hub.endless_bytes += 65536
                    time.sleep(pause)

            def _error(self, status: int, code: str) -> None:
                body = json.dumps({"error": code}).encode()
                self._send(status, body, "application/json", {"X-Error-Code": code})

            def _send(self, status, body, kind, headers, length=None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def downloads(self, repo: str, suffix: str = ".safetensors") -> int:
        """GETs of the repository's files ending in `suffix`."""
        prefix = f"/{repo}/resolve/"
        return sum(1 for m, p in self.requests if m == "GET" and p.startswith(prefix)
                   and p.endswith(suffix))  # fmt: skip
