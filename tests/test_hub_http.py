"""Model downloads through huggingface_hub under the same guard as every other URL: each request
and redirect hop checked (a strict policy, the hub's own address trusted as the operator's
endpoint), one deadline, a cancel that stops the transfer, bounds on bytes and files, and
refusals that name the input. A hub-shaped server on 127.0.0.1 answers as the hub does, then
as a hostile one would."""

import threading
import time

import pytest
from huggingface_hub import HfApi
from loopback import FileServer
from model_repos import files_tier, hub_copy

from sdcog.common.cancel import PredictionCancelledError
from sdcog.models.model_cache import size
from sdcog.request.model_choice import parse
from sdcog.security.transfer import DownloadError

UNET = "unet/diffusion_pytorch_model.safetensors"


def resolve(model_repos, repo: str, file: str) -> str:
    """The path huggingface_hub asks for: the file at the commit the listing named."""
    return f"/{repo}/resolve/{model_repos.hub.commit(repo)}/{file}"


@pytest.fixture
def hub(model_repos):
    """The hub, its hostile answers cleared after each test."""
    yield model_repos.hub
    for answers in (model_repos.hub.redirects, model_repos.hub.endless, model_repos.hub.headers,
                    model_repos.hub.listings):  # fmt: skip
        answers.clear()


@pytest.fixture
def receiver(tmp_path):
    """What a redirect must not reach: a server on 127.0.0.1 that records every request."""
    server = FileServer(tmp_path / "receiver")
    server.put("weights.safetensors", b"not for you")
    yield server
    server.httpd.shutdown()


def strict(model_repos, tiny_weights, tmp_path, **settings):
    """No private address allowed but the operator's endpoints (the hub and file server here)."""
    return files_tier(model_repos, tiny_weights, tmp_path, private_networks=(), **settings)


def fetch(tier, text: str, input_name: str = "base_model", stop=None, check=lambda f: None):
    return tier.folder(parse(text, input_name), check, stop)


def leftovers(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "models/models").iterdir())


def test_a_redirect_to_a_private_address_is_refused(
    model_repos, hub, receiver, tiny_weights, tmp_path
):
    tier = strict(model_repos, tiny_weights, tmp_path)
    target = f"{receiver.url}/weights.safetensors"
    hub.redirects[resolve(model_repos, "org/sd1", UNET)] = target
    with pytest.raises(ValueError, match=rf"^base_model: {target} leads to 127\.0\.0\.1"):
        fetch(tier, "org/sd1")
    hub.redirects[resolve(model_repos, "org/vae-sd", "config.json")] = target
    with pytest.raises(ValueError, match=rf"^vae: {target} leads to 127\.0\.0\.1"):
        fetch(tier, "org/vae-sd", "vae")
    assert receiver.requests == []
    assert leftovers(tmp_path) == []
    # A redirect within the operator's endpoint is followed, as the hub's own are.
    hub.redirects[resolve(model_repos, "org/sd1", UNET)] = f"/org/sd1/resolve/main/{UNET}"
    assert (fetch(tier, "org/sd1") / UNET).exists()


def test_huggingface_hub_reaches_nothing_outside_a_guarded_download(
    model_repos, hub, tiny_weights, tmp_path
):
    strict(model_repos, tiny_weights, tmp_path)  # as the server's setup installs the guard
    before = len(hub.requests)
    with pytest.raises(DownloadError, match="outside a guarded download"):
        HfApi(endpoint=hub.url).model_info("org/sd1")
    assert len(hub.requests) == before


def test_xet_answers_are_downloaded_over_guarded_http(
    model_repos, hub, receiver, tiny_weights, tmp_path
):
    """hf_xet's own client would bypass the guard: the transport hides Xet from
    huggingface_hub, so the file comes over HTTP (and the Xet endpoint is never asked)."""
    xet = {"X-Xet-Hash": "a" * 64, "X-Xet-Refresh-Route": f"{receiver.url}/xet-read-token"}
    hub.headers[resolve(model_repos, "org/sd2", UNET)] = xet
    folder = fetch(strict(model_repos, tiny_weights, tmp_path), "org/sd2")
    assert (folder / UNET).read_bytes() == (model_repos.root / "hub/org/sd2" / UNET).read_bytes()
    assert receiver.requests == []


def wait_until_quiet(hub) -> int:
    """The bytes the hub's endless answers have sent, once they stop growing."""
    while True:
        sent = hub.endless_bytes
        time.sleep(0.5)
        if hub.endless_bytes == sent:
            return sent


def test_an_endless_config_is_cut_at_its_bound(model_repos, hub, tiny_weights, tmp_path):
    hub.endless[resolve(model_repos, "org/sd2", "unet/config.json")] = 0
    before = hub.endless_bytes
    bound = r"is larger than 16,777,216 bytes \(16 MiB, the bound on a config or tokenizer file\)"
    with pytest.raises(ValueError, match=rf"^base_model: .*/unet/config\.json {bound}"):
        fetch(strict(model_repos, tiny_weights, tmp_path), "org/sd2")
    # What the socket buffers held beyond the bound, no more: the connection is closed.
    assert wait_until_quiet(hub) - before < 32 << 20
    assert leftovers(tmp_path) == []


def test_one_deadline_covers_the_whole_model(model_repos, hub, tiny_weights, tmp_path):
    hub.endless[resolve(model_repos, "org/sd2", UNET)] = 0.1  # 640 KB/s, forever
    tier = strict(model_repos, tiny_weights, tmp_path, model_timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"^base_model: org/sd2 took longer than 1.5 s "
                                         r"\(MODEL_TIMEOUT_S\)$"):  # fmt: skip
        fetch(tier, "org/sd2")
    assert time.monotonic() - start < 3
    wait_until_quiet(hub)
    assert leftovers(tmp_path) == []


def test_a_cancel_stops_the_transfer_at_once(model_repos, hub, tiny_weights, tmp_path):
    hub.endless[resolve(model_repos, "org/sd2", UNET)] = 0
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    with pytest.raises(PredictionCancelledError):
        fetch(strict(model_repos, tiny_weights, tmp_path), "org/sd2", stop=stop)
    assert time.monotonic() - start < 1.5
    sent = wait_until_quiet(hub)
    time.sleep(1)
    assert hub.endless_bytes == sent  # nothing is written on after the cancel
    assert leftovers(tmp_path) == []


def test_a_model_larger_than_the_cache_is_refused(model_repos, hub, tiny_weights, tmp_path):
    tier = strict(model_repos, tiny_weights, tmp_path, model_cache_bytes=7_000_000)
    before = hub.downloads("org/sd1")
    # From the sizes the hub lists: before any weights are fetched.
    refusal = r"^base_model: org/sd1 is 0\.01 GB, more than the model cache may hold "
    with pytest.raises(ValueError, match=refusal + r"\(MODEL_CACHE_GB, 0\.00652 GB\)$"):
        fetch(tier, "org/sd1")
    assert hub.downloads("org/sd1") == before
    # A listing without sizes: cut while the weights stream.
    files = sorted(p for p in (model_repos.root / "hub/org/sd1").rglob("*") if p.is_file())
    names = [str(p.relative_to(model_repos.root / "hub/org/sd1")) for p in files]
    hub.listings["org/sd1"] = {"siblings": [{"rfilename": name} for name in names]}
    with pytest.raises(ValueError, match=r"^base_model: .* is larger than 7,000,000 bytes "
                                         r"\(MODEL_CACHE_GB"):  # fmt: skip
        fetch(tier, "org/sd1")
    assert leftovers(tmp_path) == []


def test_bounds_on_the_files_of_a_repository(model_repos, hub, tiny_weights, tmp_path):
    tier = strict(model_repos, tiny_weights, tmp_path)
    listed = [{"rfilename": f"samples/{n}.png"} for n in range(1001)]
    hub.listings["org/sd1"] = {"siblings": listed}
    with pytest.raises(ValueError, match=r"^base_model: org/sd1 lists 1001 files; a model "
                                         r"repository may list at most 1000$"):  # fmt: skip
        fetch(tier, "org/sd1")
    many = hub_copy(model_repos, "org/many-configs")
    for n in range(70):
        (many / f"unet/extra-{n}.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^base_model: org/many-configs would take 80 files "
                                         r"to load; a model may take at most 64$"):  # fmt: skip
        fetch(tier, "org/many-configs")
    assert not any("extra-" in path for _, path in hub.requests)


def test_answers_no_hub_gives_are_refused_naming_the_input(
    model_repos, hub, tiny_weights, tmp_path
):
    tier = strict(model_repos, tiny_weights, tmp_path)
    hub.listings["org/sd1"] = {"sha": None}
    with pytest.raises(ValueError, match=r"^base_model: org/sd1: the hub's answer names no "
                                         r"commit"):  # fmt: skip
        fetch(tier, "org/sd1")
    odd = hub_copy(model_repos, "org/odd-names")
    (odd / "unet/..\\..\\x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"^base_model: org/odd-names lists a file named "
                                         r"'unet/\.\.\\\\\.\.\\\\x\.json', which is not a plain "
                                         r"relative path$"):  # fmt: skip
        fetch(tier, "org/odd-names")
    assert leftovers(tmp_path) == []


def test_what_a_download_leaves_is_within_the_cache_bound(model_repos, hub, tiny_weights, tmp_path):
    """Refusals after the configs leave nothing behind; a whole model is counted."""
    tier = strict(model_repos, tiny_weights, tmp_path)

    def refuse(folder):
        raise ValueError("controlnet_1: does not fit")

    for repo in ("org/sd1", "org/sd2", "org/sdxl", "org/pinned-copy"):
        with pytest.raises(ValueError, match="^controlnet_1"):
            fetch(tier, repo, check=refuse)
    assert leftovers(tmp_path) == []
    assert size(tmp_path / "models") < 10_000  # the index and the locks


@pytest.mark.parametrize(
    "location", ["http://%5B::1%5D:18001/x.safetensors", "http://[::1]x:18001/x.safetensors"]
)
def test_a_redirect_no_client_can_parse_is_refused_naming_the_input(
    model_repos, hub, tiny_weights, tmp_path, location
):
    hub.redirects[resolve(model_repos, "org/sd2", UNET)] = location
    with pytest.raises(ValueError, match=r"^base_model: "):
        fetch(strict(model_repos, tiny_weights, tmp_path), "org/sd2")
    assert leftovers(tmp_path) == []
