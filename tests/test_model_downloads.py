"""base_model and vae downloads through Cog's real server, under the guard every URL has: a
strict server whose HF_ENDPOINT is a hub-shaped server on 127.0.0.1 (the operator's mirror,
trusted). A redirect off the mirror to a private address is refused with nothing fetched, every
input that takes owner/repo follows the same rule, and a cancel stops a download at once."""

import time

import requests
from helpers import output_images
from loopback import FileServer

SMALL = {"prompt": "a lighthouse", "num_inference_steps": 2, "width": 128, "height": 128,
         "seed": 3}  # fmt: skip
UNET = "unet/diffusion_pytorch_model.safetensors"


def resolve(model_repos, repo: str, file: str) -> str:
    return f"/{repo}/resolve/{model_repos.hub.commit(repo)}/{file}"


def test_owner_repo_means_the_mirror_for_every_input(hub_strict_server, model_repos, adapter_refs):
    """One rule: HF_ENDPOINT is the operator's, so a model and a LoRA named owner/repo both
    come from it in strict mode; a URL to another private address is still refused."""
    lora = model_repos.hub.root / "org/lora-on-the-mirror/pytorch_lora_weights.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(adapter_refs["sd"]["a_bytes"])
    plain = hub_strict_server.predict(**SMALL)["output"]
    with_lora = hub_strict_server.predict(**SMALL, lora_weights=["org/lora-on-the-mirror"])
    assert output_images(with_lora) and with_lora["output"] != plain
    assert output_images(hub_strict_server.predict(**SMALL, base_model="org/sd1"))
    assert output_images(hub_strict_server.predict(**SMALL, vae="org/vae-sd"))
    error = hub_strict_server.failure(**SMALL, lora_weights=[adapter_refs["sd"]["a"]])
    assert error.startswith("lora_weights: ") and "leads to 127.0.0.1" in error


def test_a_redirect_off_the_mirror_to_a_private_address_is_refused(
    hub_strict_server, model_repos, tmp_path
):
    receiver = FileServer(tmp_path)
    receiver.put("weights.safetensors", b"not for you")
    target = f"{receiver.url}/weights.safetensors"
    hops = {("base_model", "org/sd2"): UNET, ("vae", "org/vae-sdxl"): "config.json"}
    try:
        for (input_name, repo), file in hops.items():
            model_repos.hub.redirects[resolve(model_repos, repo, file)] = target
            error = hub_strict_server.failure(**SMALL, **{input_name: repo})
            assert error.startswith(f"{input_name}: {target} leads to 127.0.0.1"), error
    finally:
        model_repos.hub.redirects.clear()
        receiver.httpd.shutdown()
    assert receiver.requests == []
    assert output_images(hub_strict_server.predict(**SMALL, base_model="org/sd2"))


def test_a_cancel_stops_a_model_download_at_once(hub_strict_server, model_repos, webhooks):
    model_repos.hub.endless[resolve(model_repos, "org/pinned-copy", UNET)] = 0.01
    start = model_repos.hub.endless_bytes  # what other tests' endless answers sent
    try:
        response = hub_strict_server.post(
            SMALL | {"base_model": "org/pinned-copy"}, headers={"Prefer": "respond-async"},
            webhook=webhooks.url, webhook_events_filter=["completed"],
        )  # fmt: skip
        while model_repos.hub.endless_bytes - start < 1 << 20:  # well into the weights
            time.sleep(0.05)
        cancel = f"{hub_strict_server.url}/predictions/{response.json()['id']}/cancel"
        cancelled_at = time.monotonic()
        assert requests.post(cancel, timeout=10).status_code == 200
        assert webhooks.final()["status"] == "canceled"
        assert time.monotonic() - cancelled_at < 3
        sent = model_repos.hub.endless_bytes
        time.sleep(2)
        assert model_repos.hub.endless_bytes - sent < 1 << 20  # the socket buffers, no more
    finally:
        model_repos.hub.endless.clear()
    assert output_images(hub_strict_server.predict(**SMALL))
