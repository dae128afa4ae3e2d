"""What the server fetches or opens for a user: in-process against real loopback servers, and
through Cog's server with the default policy. No test sends a packet off this machine: the
addresses refused are IP literals (resolving them sends nothing), and every proxy is DEAD_PROXY.
"""

import tempfile
from pathlib import Path

import pytest
from loopback import DEAD_PROXY
from PIL import Image

from conftest import data_uri, output_images
from sdcog import netguard
from sdcog.downloads import AdapterCache

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
]


@pytest.fixture
def proxied(monkeypatch):
    """The default policy; conftest's in_process_policy has set the dead proxy."""
    monkeypatch.delenv("ALLOW_PRIVATE_URLS", raising=False)
    before = DEAD_PROXY.connections
    yield monkeypatch
    assert DEAD_PROXY.connections == before, "a refused URL reached the network"


@pytest.mark.parametrize("url", PRIVATE)
def test_private_addresses_are_refused_before_connecting(proxied, url):
    with pytest.raises(ValueError, match=r"^lora_weights: .* leads to .*ALLOW_PRIVATE_URLS"):
        netguard.get(url, "lora_weights", timeout=5)


def test_loopback_file_server_refused_unless_allowed(proxied, file_server, tmp_path):
    url = file_server.put("guard/a.safetensors", b"x")
    cache = AdapterCache(root=tmp_path)
    with pytest.raises(ValueError, match="^lora_weights: .* leads to 127.0.0.1"):
        cache.fetch(url, "lora_weights")
    assert file_server.count("guard/a.safetensors") == 0
    proxied.setenv("ALLOW_PRIVATE_URLS", "1")
    assert netguard.get(url, "lora_weights", timeout=5).content == b"x"


def test_every_redirect_hop_is_checked(proxied, file_server):
    # Loopback allowed, nothing else: a hop to the metadata service is refused unconnected.
    proxied.setenv("ALLOW_PRIVATE_URLS", "127.0.0.0/8")
    target = file_server.put("guard/b.safetensors", b"b")
    file_server.redirects["/hop1"] = "/hop2"  # relative, as servers often answer
    file_server.redirects["/hop2"] = target
    assert netguard.get(f"{file_server.url}/hop1", "lora_weights", timeout=5).content == b"b"
    file_server.redirects["/to-metadata"] = "http://169.254.169.254/latest/meta-data/"
    with pytest.raises(ValueError, match="leads to 169.254.169.254"):
        netguard.get(f"{file_server.url}/to-metadata", "lora_weights", timeout=5)
    file_server.redirects["/to-file"] = "file:///etc/hostname"
    with pytest.raises(ValueError, match="is not an http"):
        netguard.get(f"{file_server.url}/to-file", "lora_weights", timeout=5)
    file_server.redirects["/loop"] = "/loop"
    with pytest.raises(ValueError, match="more than 5 redirects"):
        netguard.get(f"{file_server.url}/loop", "lora_weights", timeout=5)


def test_a_list_of_networks_allows_just_those(proxied):
    proxied.setenv("ALLOW_PRIVATE_URLS", "10.0.0.0/8, 127.0.0.1")
    netguard.check_url("http://10.9.9.9/x", "lora_weights")
    netguard.check_url("http://127.0.0.1/x", "lora_weights")
    with pytest.raises(ValueError, match="leads to 192.168.1.1"):
        netguard.check_url("http://192.168.1.1/x", "lora_weights")


def test_server_paths_are_refused_unless_allowed(monkeypatch, tmp_path):
    monkeypatch.delenv("ALLOW_LOCAL_INPUT_PATHS", raising=False)
    with pytest.raises(ValueError, match="^image: '/etc/hostname' is a path on the server"):
        netguard.input_file("/etc/hostname", "image")
    with pytest.raises(ValueError, match="^mask: .* is a path on the server"):
        netguard.input_file(tmp_path / "m.png", "mask")  # a Path outside Cog's download folder
    downloaded = Path(tempfile.gettempdir()) / "tmpabc123photo.png"
    assert netguard.input_file(downloaded, "image") == downloaded
    monkeypatch.setenv("ALLOW_LOCAL_INPUT_PATHS", "1")
    assert netguard.input_file("/etc/hostname", "image") == Path("/etc/hostname")


def test_through_cogs_server_with_the_default_policy(strict_server, file_server):
    before = DEAD_PROXY.connections
    lora = file_server.put("guard/strict.safetensors", b"never fetched")
    small = {"prompt": "x", "num_inference_steps": 2, "width": 128, "height": 128}
    error = strict_server.failure(**small, lora_weights=[lora])
    assert error.startswith(f"lora_weights: {lora} leads to 127.0.0.1")
    assert file_server.count("guard/strict.safetensors") == 0
    image = data_uri(Image.new("RGB", (128, 128), "red"))
    model = "http://169.254.169.254/latest/x.safetensors"
    error = strict_server.failure(**small, controlnet_1="canny", controlnet_1_image=image,
                                  controlnet_1_model=model)  # fmt: skip
    assert error.startswith(f"controlnet_1_model: {model} leads to 169.254.169.254")
    assert strict_server.failure(**small, image="/etc/hostname").startswith(
        "image: '/etc/hostname' is a path on the server"
    )
    assert strict_server.failure(**small, image=image, mask="/etc/passwd").startswith("mask: ")
    assert DEAD_PROXY.connections == before
    # What Cog downloads itself (data: URIs, and URLs: see the README) still works.
    output_images(strict_server.predict(**small, image=image))
    output_images(
        strict_server.predict(**small, image=file_server.put_image(Image.new("RGB", (64, 64))))
    )
