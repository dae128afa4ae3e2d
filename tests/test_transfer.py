"""sdcog.security.transfer against real servers on 127.0.0.1 and ::1: the checked address is the
address connected to (every hop, TLS and proxies included), and the deadline and a cancel end a
download whatever the server does. Public-looking names resolve to loopback or go to the dead
proxy."""

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loopback import DEAD_PROXY, FileServer

from sdcog.common.cancel import PredictionCancelledError
from sdcog.security import netguard, transfer

V4 = netguard.networks("127.0.0.1")


def fetch(url: str, timeout: float = 5, allowed: netguard.Networks = V4, **kwargs) -> bytes:
    with transfer.get(url, "lora_weights", timeout, allowed=allowed, **kwargs) as response:
        response.raise_for_status()
        return response.content


@pytest.fixture
def twins(tmp_path):
    """A file server on 127.0.0.1 and one on [::1], on the same port."""
    v4 = FileServer(tmp_path / "v4")
    v6 = FileServer(tmp_path / "v6", host="::1", port=v4.httpd.server_port)
    v4.put("x.safetensors", b"from 127.0.0.1")
    v6.put("x.safetensors", b"from ::1")
    yield v4, v6
    v4.httpd.shutdown()
    v6.httpd.shutdown()


def resolving(monkeypatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """getaddrinfo gives each name in `answers` its next answer (the last one repeats): a DNS
    server that rebinds. Names under .test bypass the proxy. Returns the names looked up."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost,::1,.test")
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        addresses = answers[host][min(asked.count(host), len(answers[host])) - 1]
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
             (a, port, 0, 0) if ":" in a else (a, port))
            for a in addresses
        ]  # fmt: skip

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_the_checked_address_is_the_address_connected_to(twins, monkeypatch):
    v4, v6 = twins
    # First 127.0.0.1 (allowed), then ::1 (refused) for anyone who asks again.
    asked = resolving(monkeypatch, {"rebind.test": [["127.0.0.1"], ["::1"]]})
    port = v4.httpd.server_port
    assert fetch(f"http://rebind.test:{port}/x.safetensors") == b"from 127.0.0.1"
    assert asked == ["rebind.test"]  # resolved once
    assert v6.requests == []
    assert v4.requests == ["/x.safetensors"]


def test_every_address_of_a_host_is_checked_and_the_next_tried(twins, monkeypatch):
    v4, v6 = twins
    port = v4.httpd.server_port
    resolving(monkeypatch, {"both.test": [["127.0.0.1", "::1"]], "next.test": [["::2", "::1"]]})
    with pytest.raises(ValueError, match="leads to ::1"):
        fetch(f"http://both.test:{port}/x.safetensors")
    assert v4.requests == v6.requests == []
    ipv6_loopbacks = netguard.networks("::/126")  # ::1, and ::2, which nothing answers
    assert fetch(f"http://next.test:{port}/x.safetensors", allowed=ipv6_loopbacks) == b"from ::1"


def test_every_redirect_hop_is_checked(twins, monkeypatch):
    v4, v6 = twins
    port = v4.httpd.server_port
    v4.redirects["/hop1"] = "/hop2"  # relative, as servers often answer
    v4.redirects["/hop2"] = "/x.safetensors"
    assert fetch(f"{v4.url}/hop1") == b"from 127.0.0.1"
    hostile = {
        "/to-metadata": "http://169.254.169.254/latest/meta-data/",
        "/to-v6": f"http://[::1]:{port}/x.safetensors",
        "/backslash-v6": f"http://[::1]:{port}\\@1.1.1.1/x.safetensors",
        "/backslash-v4": f"http://127.0.0.1:{port}\\@1.1.1.1/x.safetensors",
        "/userinfo": f"http://1.1.1.1@[::1]:{port}/x.safetensors",
        "/nat64": f"http://[64:ff9b::127.0.0.1]:{port}/x.safetensors",
        "/to-file": "file:///etc/hostname",
    }
    v4.redirects.update(hostile)
    for path in hostile:
        with pytest.raises(ValueError, match="^lora_weights: (?!could not)"):
            fetch(f"{v4.url}{path}")
    assert v6.requests == []
    v4.redirects["/loop"] = "/loop"
    with pytest.raises(ValueError, match="more than 5 redirects"):
        fetch(f"{v4.url}/loop")


def test_a_proxy_is_handed_the_checked_address(monkeypatch):
    seen: list[tuple[str, str]] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers["Host"]))
            self.send_response(200)
            self.send_header("Content-Length", "7")
            self.end_headers()
            self.wfile.write(b"proxied")

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_port}")
    asked = resolving(monkeypatch, {"files.example": [["93.184.216.34"], ["127.0.0.1"]]})
    try:
        assert fetch("http://files.example/a/b.safetensors?v=1", allowed=()) == b"proxied"
    finally:
        proxy.shutdown()
    assert seen == [("http://93.184.216.34:80/a/b.safetensors?v=1", "files.example")]
    assert asked == ["files.example"]


def test_without_a_proxy_a_public_address_goes_to_the_dead_proxy(monkeypatch):
    # conftest's environment: every proxy is the dead one, so nothing leaves this machine.
    resolving(monkeypatch, {"files.example": [["93.184.216.34"]]})
    before = DEAD_PROXY.connections
    with pytest.raises(ValueError, match="^lora_weights: could not"):
        fetch("http://files.example/x.safetensors", allowed=())
    assert DEAD_PROXY.connections == before + 1


def _certificate(tmp_path, name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("certified", ["tls.test", "other.test"])
def test_tls_names_and_verifies_the_host_as_written(tmp_path, monkeypatch, certified):
    cert, key = _certificate(tmp_path, certified)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    names: list[str] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    files = FileServer(tmp_path / "tls")
    files.put("x.safetensors", b"over tls")
    files.httpd.socket = context.wrap_socket(files.httpd.socket, server_side=True)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    resolving(monkeypatch, {"tls.test": [["127.0.0.1"]]})
    url = f"https://tls.test:{files.httpd.server_port}/x.safetensors"
    try:
        if certified == "tls.test":
            assert fetch(url) == b"over tls"
        else:
            with pytest.raises(ValueError, match="^lora_weights: could not .*(certificate|match)"):
                fetch(url)
    finally:
        files.httpd.shutdown()
    assert names[0] == "tls.test"  # SNI names the host, though the socket went to 127.0.0.1


def test_a_trickling_server_is_cut_off_at_the_deadline(tmp_path):
    files = FileServer(tmp_path)
    files.put("headers.safetensors", b"x" * 100)
    files.put("body.safetensors", b"x" * 500)
    files.trickles["/headers.safetensors"] = 0.5  # ~40 header bytes: 20 s
    files.trickles["/body.safetensors"] = 0.01  # headers in ~0.4 s, the body in 5 s
    try:
        for name in ("headers", "body"):
            started = time.monotonic()
            with pytest.raises(ValueError, match=r"^lora_weights: .* took longer than 1\.5 s"):
                fetch(f"{files.url}/{name}.safetensors", timeout=1.5)
            assert 1.4 < time.monotonic() - started < 2.5, name
    finally:
        files.httpd.shutdown()


def test_a_cancel_stops_a_download_at_once(tmp_path):
    files = FileServer(tmp_path)
    files.put("slow.safetensors", b"x" * 1000)
    files.trickles["/slow.safetensors"] = 0.01
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    try:
        with pytest.raises(PredictionCancelledError):
            fetch(f"{files.url}/slow.safetensors", timeout=60, stop=stop)
        assert time.monotonic() - started < 1.0
        with pytest.raises(PredictionCancelledError):  # set before: nothing is sent
            fetch(f"{files.url}/slow.safetensors", timeout=60, stop=stop)
        assert files.count("slow.safetensors") == 1
    finally:
        files.httpd.shutdown()


def test_ipv6_literals_connect_as_written(twins, monkeypatch):
    _, v6 = twins
    assert fetch(f"{v6.url}/x.safetensors", allowed=netguard.networks("::1")) == b"from ::1"
    assert ipaddress.ip_address("::1").version == 6


@pytest.mark.parametrize(
    "location", ["http://%5B::1%5D:18001/x.safetensors", "http://[::1]x:18001/x.safetensors"]
)
def test_a_redirect_no_client_can_parse_is_refused_naming_the_input(tmp_path, location):
    server = FileServer(tmp_path)
    server.redirects["/hop"] = location
    with pytest.raises(ValueError, match=r"^lora_weights: "):
        fetch(f"{server.url}/hop")
    server.httpd.shutdown()


def test_the_deadline_is_named_by_the_setting_that_sets_it(tmp_path):
    server = FileServer(tmp_path)
    server.put("slow.safetensors", b"x" * 100)
    server.trickles["/slow.safetensors"] = 0.05
    with pytest.raises(ValueError, match=r"^base_model: .* took longer than 0.5 s "
                                         r"\(MODEL_TIMEOUT_S\)$"):  # fmt: skip
        with transfer.get(f"{server.url}/slow.safetensors", "base_model", 0.5, allowed=V4,
                          setting="MODEL_TIMEOUT_S") as response:  # fmt: skip
            assert response.content
    server.httpd.shutdown()
