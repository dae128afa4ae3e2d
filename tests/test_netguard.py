"""What the server fetches or opens for a user: the URL's one parse and the address policy, in
process. Connecting to the checked address is tested in test_transfer.py, the whole path through
Cog's server in test_ssrf.py. Nothing here sends a packet: the addresses are IP literals, and
where a lookup must not even start, the resolver raises."""

import ipaddress
import socket
import tempfile
from pathlib import Path

import pytest

from sdcog.security import netguard

PRIVATE = [
    "http://169.254.169.254/latest/meta-data/iam/x.safetensors",  # cloud metadata
    "http://10.1.2.3/x.safetensors",
    "http://192.168.0.1/x.safetensors",
    "https://172.16.0.1/x.safetensors",
    "http://[::1]:8080/x.safetensors",
    "http://[::ffff:127.0.0.1]/x.safetensors",
    "http://[fd00:ec2::254]/x.safetensors",  # AWS metadata over IPv6
    "http://0.0.0.0/x.safetensors",
    "http://100.64.0.1/x.safetensors",  # carrier-grade NAT
    "http://localhost/x.safetensors",
    "http://127.1/x.safetensors",  # inet_aton's short form
    "http://2130706433/x.safetensors",  # 127.0.0.1 as one number
    "http://[::127.0.0.1]/x.safetensors",  # IPv4-compatible
    "http://[::ffff:0:10.0.0.1]/x.safetensors",  # IPv4-translated
    "http://[64:ff9b::10.0.0.1]/x.safetensors",  # NAT64 of a private address
    "http://[64:ff9b::127.0.0.1]/x.safetensors",
    "http://[64:ff9b:1::8.8.8.8]/x.safetensors",  # local-use NAT64
    "http://[2002:7f00:1::1]/x.safetensors",  # 6to4 of 127.0.0.1
    "http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/x.safetensors",  # Teredo, client 10.0.0.1
    "http://[ff02::1]/x.safetensors",  # multicast
]

# What HTTP clients read in different ways: refused before any lookup.
AMBIGUOUS = [
    "http://127.0.0.1:8099\\@1.1.1.1/lora.safetensors",
    "http://localhost\\@1.1.1.1/lora.safetensors",
    "http://169.254.169.254\\@1.1.1.1/lora.safetensors",
    "http://10.0.0.1\\@1.1.1.1/lora.safetensors",
    "http://[::1]\\@1.1.1.1/lora.safetensors",
    "http://1.1.1.1/\\\\127.0.0.1/lora.safetensors",
    "http://user@1.1.1.1/lora.safetensors",
    "http://1.1.1.1@127.0.0.1/lora.safetensors",
    "http://1.1.1.1:@127.0.0.1/lora.safetensors",
    "http://1.1.1.1 /lora.safetensors",
    "http://1.1.1.1/lora.safetensors\tx",
    "http://1.1.1.1/lora.safetensors\n",
    "http://1.1.1.1\x00.evil/lora.safetensors",
    "http://%31%32%37.0.0.1/lora.safetensors",
    "http://\uff11\uff12\uff17.0.0.1/lora.safetensors",  # fullwidth digits: IDNA makes 127
    "http://[::1%25lo]/lora.safetensors",
    "http:///lora.safetensors",
    "http://:80/lora.safetensors",
    "http://1.1.1.1:99999/lora.safetensors",
    "ftp://1.1.1.1/lora.safetensors",
    "file:///etc/passwd",
    "http://" + "a" * 5000 + "/x",
    "http://[::1]x:18001/a.safetensors",  # urllib3 cannot parse it (LocationParseError)
    "http://%5B::1%5D:18001/a.safetensors",  # nor urlsplit ("Port could not be cast")
]


@pytest.fixture
def no_lookups(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a lookup was started for {args[0]!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("url", AMBIGUOUS)
def test_ambiguous_urls_are_refused_before_any_lookup(no_lookups, url):
    with pytest.raises(ValueError, match=r"^lora_weights: ") as refused:
        netguard.resolve(url, "lora_weights")
    assert "leads to" not in str(refused.value)


@pytest.mark.parametrize("url", PRIVATE)
def test_private_addresses_are_refused(url):
    with pytest.raises(ValueError, match=r"^lora_weights: .* leads to .*ALLOW_PRIVATE_URLS"):
        netguard.resolve(url, "lora_weights")


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::8.8.8.8", "::ffff:8.8.8.8",
     "2002:808:808::1", "2a00:1450:4001:80b::200e"],
)  # fmt: skip
def test_public_addresses_pass(address):
    assert netguard.is_public(ipaddress.ip_address(address))


def test_one_parse_gives_what_is_sent():
    url = netguard.parse("https://Example.COM.:8443/a%20b/c.safetensors?x=1#frag", "lora_weights")
    assert (url.scheme, url.host, url.port) == ("https", "example.com", 8443)
    assert url.target == "/a%20b/c.safetensors?x=1"  # no fragment
    assert url.netloc == "example.com:8443"
    v6 = netguard.parse("http://[2606:4700::1111]/x", "lora_weights")
    assert (v6.host, v6.port, v6.netloc, v6.target) == (
        "2606:4700::1111",
        80,
        "[2606:4700::1111]",
        "/x",
    )


def test_a_list_of_networks_allows_just_those():
    allowed = netguard.networks("10.0.0.0/8, 127.0.0.1")
    assert netguard.resolve("http://10.9.9.9/x", "lora_weights", allowed)[1] == [
        ipaddress.ip_address("10.9.9.9")
    ]
    netguard.resolve("http://127.0.0.1/x", "lora_weights", allowed)
    netguard.resolve("http://[::ffff:127.0.0.1]/x", "lora_weights", allowed)  # the same address
    for refused in ("http://192.168.1.1/x", "http://[::1]/x", "http://[64:ff9b::127.0.0.1]/x"):
        with pytest.raises(ValueError, match="leads to"):
            netguard.resolve(refused, "lora_weights", allowed)
    # Allowing all still parses strictly.
    assert (
        netguard.networks("1") is None and netguard.networks("0") == netguard.networks(None) == ()
    )
    netguard.resolve("http://192.168.1.1/x", "lora_weights", None)
    with pytest.raises(ValueError, match="backslashes"):
        netguard.resolve("http://127.0.0.1\\@1.1.1.1/x", "lora_weights", None)


def test_server_paths_are_refused_unless_allowed(tmp_path):
    with pytest.raises(ValueError, match="^image: '/etc/hostname' is a path on the server"):
        netguard.input_file("/etc/hostname", "image")
    with pytest.raises(ValueError, match="^mask: .* is a path on the server"):
        netguard.input_file(tmp_path / "m.png", "mask")  # a Path outside Cog's download folder
    downloaded = Path(tempfile.gettempdir()) / "tmpabc123photo.png"
    assert netguard.input_file(downloaded, "image") == downloaded
    assert netguard.input_file("/etc/hostname", "image", local_paths=True) == Path("/etc/hostname")
