"""Every URL input through Cog's real server, with the forms that once reached loopback: a
backslash before '@' (netguard read the host after it, requests connected to the one before),
IPv6 forms that carry a private IPv4 address, user info, and each of them in a redirect's
Location. The servers run with the dead proxy; receivers on 127.0.0.1 and ::1 count every hit,
and must count none."""

import pytest
from helpers import data_uri, output_images
from loopback import DEAD_PROXY, FileServer
from PIL import Image

SMALL = {"prompt": "x", "num_inference_steps": 2, "width": 128, "height": 128}
NAME = "lora.safetensors"


@pytest.fixture(scope="module")
def receivers(tmp_path_factory, adapter_refs):
    """A receiver on 127.0.0.1 and one on [::1], on one port, both serving a real LoRA."""
    root = tmp_path_factory.mktemp("receivers")
    v4 = FileServer(root / "v4")
    v6 = FileServer(root / "v6", host="::1", port=v4.httpd.server_port)
    for server in (v4, v6):
        server.put(NAME, adapter_refs["sd"]["a_bytes"])
        server.put("config.json", b"{}")
    yield v4, v6
    v4.httpd.shutdown()
    v6.httpd.shutdown()


def forms(port: int) -> list[str]:
    before_backslash = ["127.0.0.1", "localhost", "169.254.169.254", "10.0.0.1", "[::1]"]
    return [
        *(f"http://{host}:{port}\\@1.1.1.1/{NAME}" for host in before_backslash),
        f"http://[::127.0.0.1]:{port}/{NAME}",  # IPv4-compatible
        f"http://[::ffff:0:127.0.0.1]:{port}/{NAME}",  # IPv4-translated
        f"http://[::ffff:127.0.0.1]:{port}/{NAME}",  # IPv4-mapped
        f"http://[64:ff9b::127.0.0.1]:{port}/{NAME}",  # NAT64
        f"http://[64:ff9b::10.0.0.1]:{port}/{NAME}",
        f"http://1.1.1.1@127.0.0.1:{port}/{NAME}",
        f"http://[::1]:{port}/{NAME} ",
        f"http://[::1]:{port}/\t{NAME}",
    ]


def as_inputs(url: str) -> list[tuple[str, dict]]:
    control = data_uri(Image.new("RGB", (128, 128), "white"))
    return [
        ("lora_weights", {"lora_weights": [url]}),
        ("textual_inversions", {"textual_inversions": [f"<t>={url}"]}),
        ("controlnet_1_model", {"controlnet_1": "canny", "controlnet_1_image": control,
                                "controlnet_1_model": url}),
    ]  # fmt: skip


def refused(server, receivers, urls: list[str]) -> None:
    v4, v6 = receivers
    before = DEAD_PROXY.connections
    for url in urls:
        for name, inputs in as_inputs(url):
            error = server.failure(**SMALL, **inputs)
            assert error.startswith(f"{name}: "), (url, error)
            assert "could not" not in error, (url, error)  # refused, not tried
    assert v4.count(NAME) == v4.count("config.json") == 0
    assert v6.requests == []
    assert DEAD_PROXY.connections == before


def test_bypass_forms_are_refused_by_a_strict_server(strict_server, receivers):
    refused(strict_server, receivers, forms(receivers[0].httpd.server_port))
    # The same server still takes a public-looking reference it cannot reach to the proxy only,
    # and runs plain requests.
    output_images(strict_server.predict(**SMALL))


def test_bypass_forms_in_redirects_are_refused_where_only_127_0_0_1_is_allowed(
    loopback_only_server, receivers
):
    v4, _ = receivers
    port = v4.httpd.server_port
    # ::ffff:127.0.0.1 is 127.0.0.1, which this policy allows.
    targets = [u for u in forms(port) if "::ffff:127" not in u] + [f"http://[::1]:{port}/{NAME}"]
    urls = []
    for n, target in enumerate(targets):
        v4.redirects[f"/hop/{n}"] = target
        urls.append(f"{v4.url}/hop/{n}")
    refused(loopback_only_server, receivers, urls)
    # What the policy allows still works: the LoRA on 127.0.0.1, directly and through a hop.
    v4.redirects["/hop/fine"] = f"/{NAME}"
    for url in (f"{v4.url}/{NAME}", f"{v4.url}/hop/fine"):
        output_images(loopback_only_server.predict(**SMALL, lora_weights=[url]))
    assert receivers[1].requests == []
