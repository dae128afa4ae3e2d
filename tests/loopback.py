"""Real servers on 127.0.0.1 for the tests: files (and Hugging Face's API) to download, webhooks
to receive, and a dead proxy that catches anything meant for elsewhere."""

import io
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty

from PIL import Image

from sdcog.tools.cli import Webhook


class DeadProxy:
    """A listener on 127.0.0.1 that counts and drops every connection: the HTTP(S) proxy of every
    server under test, so a URL that slips past netguard fails here, on this machine, and shows
    in `connections`. Loopback addresses bypass it (NO_PROXY)."""

    def __init__(self) -> None:
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

        def accept() -> None:
            while True:
                try:
                    connection, _ = self.listener.accept()
                except OSError:
                    return
                self.connections += 1
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
