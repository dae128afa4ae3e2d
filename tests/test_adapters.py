"""LoRAs, textual inversions, weighting, long prompts and clip skip through Cog's real server,
for both families. Adapter files are made by the tests and served from 127.0.0.1."""

import pickle
import time

import pytest
import requests
from helpers import ADAPTER_MAX_BYTES, output_images

SMALL = {"num_inference_steps": 3, "width": 256, "height": 256, "seed": 5}
PROMPT = "a lighthouse by the sea"


def run(server, **input) -> list[bytes]:
    """The pixels of the outputs of a prediction that must succeed (the files also carry the
    request's settings, which differ where the images must not: test_infotext.py)."""
    result = server.predict(**{"prompt": PROMPT, **SMALL, **input})
    return [image.tobytes() for image in output_images(result)]


def fail(server, **input) -> str:
    return server.failure(**{"prompt": PROMPT, **SMALL, **input})


FIRST_BASELINE: dict[str, list[bytes]] = {}


@pytest.fixture
def baseline(server):
    """The no-adapter output, checked against the one this server gave before any adapter had
    been loaded: no earlier test may have left anything behind."""
    output = run(server)
    assert FIRST_BASELINE.setdefault(server.family, output) == output
    return output


def test_lora_changes_the_image_and_is_gone_after(server, adapter_refs, baseline):
    refs = adapter_refs[server.family]
    assert run(server, lora_weights=[refs["a"]]) != baseline
    assert run(server) == baseline  # bit-identical to a server that never saw the LoRA


def test_lora_scale_matters(server, adapter_refs, baseline):
    a = adapter_refs[server.family]["a"]
    full = run(server, lora_weights=[a])
    assert run(server, lora_weights=[a], lora_scale=0.5) not in (full, baseline)
    assert run(server, lora_weights=[a], lora_scales=[0.5]) == run(
        server, lora_weights=[a], lora_scale=0.5
    )
    assert run(server, lora_weights=[a], lora_scales=[0.0]) == baseline


def test_two_loras_combine_with_their_own_scales(server, adapter_refs, baseline):
    refs = adapter_refs[server.family]
    a_alone = run(server, lora_weights=[refs["a"]])
    both = run(server, lora_weights=[refs["a"], refs["b"]])
    assert both not in (a_alone, baseline)
    assert run(server, lora_weights=[refs["a"], refs["b"]], lora_scales=[1, 0]) == a_alone
    assert run(server) == baseline


def test_second_use_comes_from_the_cache(server, adapter_refs, file_server):
    name = f"{server.family}/cache-{server.port}.safetensors"
    url = file_server.put(name, adapter_refs[server.family]["a_bytes"])
    first = server.predict(prompt=PROMPT, lora_weights=[url], **SMALL)
    second = server.predict(prompt=PROMPT, lora_weights=[url], **SMALL)
    assert file_server.count(name) == 1
    assert "from the cache" in second["logs"]
    assert first["output"] == second["output"]


def test_kohya_format_loads(server, adapter_refs, baseline):
    assert run(server, lora_weights=[adapter_refs[server.family]["kohya"]]) != baseline
    assert run(server) == baseline


def test_hugging_face_repo_reference(server, adapter_refs):
    refs = adapter_refs[server.family]
    assert run(server, lora_weights=[refs["repo"]]) == run(server, lora_weights=[refs["a"]])


def test_failed_prediction_still_unloads(server, adapter_refs, baseline):
    # The LoRA loads, then the prompt is refused inside the adapters' lifetime.
    error = fail(
        server, lora_weights=[adapter_refs[server.family]["a"]], negative_prompt="cat " * 700
    )
    assert "negative_prompt: 700 tokens" in error
    assert run(server) == baseline


def test_cancelled_prediction_still_unloads(server, adapter_refs, baseline, webhooks):
    input = {"prompt": PROMPT, **SMALL, "num_inference_steps": 500,
             "lora_weights": [adapter_refs[server.family]["a"]]}  # fmt: skip
    response = server.post(input, headers={"Prefer": "respond-async"}, webhook=webhooks.url,
                           webhook_events_filter=["logs", "completed"])  # fmt: skip
    assert response.status_code == 202
    # Cancel once the LoRA is in and denoising steps are running (tqdm's bar is in the logs).
    while "%|" not in (webhooks.next().get("logs") or ""):
        pass
    cancel = f"{server.url}/predictions/{response.json()['id']}/cancel"
    assert requests.post(cancel, timeout=10).status_code == 200
    assert webhooks.final()["status"] == "canceled"
    assert run(server) == baseline


def test_textual_inversion_is_loaded_for_one_prediction(server, adapter_refs):
    refs = adapter_refs[server.family]
    prompt = "a <tok> on a hill"
    before = run(server, prompt=prompt)
    # SD 1.x files name their token; SDXL ones (clip_l/clip_g) take it as TOKEN=REFERENCE.
    item = refs["embedding"] if server.family == "sd" else f"<tok>={refs['embedding']}"
    assert run(server, prompt=prompt, textual_inversions=[item]) != before
    assert run(server, prompt=prompt) == before


def test_embedding_of_another_width_fails_naming_the_input(server, adapter_refs, baseline):
    ref = adapter_refs[server.family]["narrow"]
    item = ref if server.family == "sd" else f"<n>={ref}"
    error = fail(server, prompt="a <n>", textual_inversions=[item])
    assert error.startswith(f"textual_inversions: {ref} holds embeddings 16 wide, and this model's")
    assert run(server) == baseline


def test_pickles_are_refused(server, file_server, baseline):
    url = file_server.put("evil.safetensors", pickle.dumps({"weight": [1, 2, 3]}))
    assert "is not a safetensors file" in fail(server, lora_weights=[url])
    ckpt = file_server.put("model.ckpt", b"never fetched")
    assert "is pickled weights" in fail(server, lora_weights=[ckpt])
    assert file_server.count("model.ckpt") == 0
    assert run(server) == baseline


def test_a_civitai_style_url_without_a_suffix_works(server, adapter_refs, file_server):
    # Hydrogen's own example: "https://civitai.com/api/download/models/34562", which redirects
    # to storage and names the file in Content-Disposition.
    data = adapter_refs[server.family]["a_bytes"]
    file_server.put(f"storage/{server.family}-34562", data)
    signed = f"/storage/{server.family}-34562?sig=1"
    file_server.dispositions[signed] = "add_detail.safetensors"
    file_server.redirects[f"/api/download/models/{server.family}-34562"] = signed
    url = f"{file_server.url}/api/download/models/{server.family}-34562"
    assert run(server, lora_weights=[url]) == run(
        server, lora_weights=[adapter_refs[server.family]["a"]]
    )


def test_oversize_and_truncated_downloads_fail_cleanly(server, adapter_refs, file_server, baseline):
    big = file_server.put("big.safetensors", b"\0" * (ADAPTER_MAX_BYTES + 1))
    assert "is larger than the" in fail(server, lora_weights=[big])
    data = adapter_refs[server.family]["a_bytes"]
    cut = file_server.put(f"{server.family}/cut.safetensors", data[: len(data) // 2])
    assert "is truncated" in fail(server, lora_weights=[cut])
    missing = f"{file_server.url}/nowhere.safetensors"
    assert "could not download" in fail(server, lora_weights=[missing])
    assert run(server) == baseline


def test_lora_for_another_model_fails_clearly(server, adapter_refs, baseline):
    other = adapter_refs["sdxl" if server.family == "sd" else "sd"]["a"]
    assert "does not fit this model" in fail(server, lora_weights=[other])
    assert run(server) == baseline


def test_mismatched_scales_fail_naming_the_input(server, adapter_refs):
    error = fail(server, lora_weights=[adapter_refs[server.family]["a"]], lora_scales=[1, 2])
    assert "lora_scales: give one scale per lora_weights entry (got 2 for 1)" in error


def test_weighting_on_and_off(server):
    assert run(server, prompt="a red cat") == run(
        server, prompt="a red cat", prompt_weighting="none"
    )
    weighted = run(server, prompt="a red+++ cat")
    assert weighted != run(server, prompt="a red+++ cat", prompt_weighting="none")
    assert weighted != run(server, prompt="a red cat")
    # A1111's syntax for the same weight gives the same image.
    a1111 = run(server, prompt="a (red:1.5) cat", prompt_weighting="a1111")
    assert a1111 == run(server, prompt="a (red)1.5 cat")
    assert a1111 != run(server, prompt="a (red:1.5) cat", prompt_weighting="none")


@pytest.mark.parametrize("weighting", ["compel", "a1111", "none"])
def test_300_token_prompt_works_and_700_fails(server, weighting):
    assert run(server, prompt="cat " * 300, prompt_weighting=weighting)
    assert "prompt: 700 tokens" in fail(server, prompt="cat " * 700, prompt_weighting=weighting)


def test_every_clip_skip(server):
    outputs = [run(server, clip_skip=skip) for skip in range(5)]
    assert len({tuple(o) for o in outputs}) == 5


def test_a_cancel_ends_a_trickling_download_at_once(sd_server, adapter_refs, file_server, webhooks):
    url = file_server.put("slow/lora.safetensors", adapter_refs["sd"]["a_bytes"])
    file_server.trickles["/slow/lora.safetensors"] = 0.05  # hours for the whole file
    response = sd_server.post({"prompt": PROMPT, **SMALL, "lora_weights": [url]},
                              headers={"Prefer": "respond-async"}, webhook=webhooks.url,
                              webhook_events_filter=["completed"])  # fmt: skip
    while file_server.count("slow/lora.safetensors") == 0:
        time.sleep(0.05)
    time.sleep(0.5)  # well into the download
    cancelled_at = time.monotonic()
    cancel = f"{sd_server.url}/predictions/{response.json()['id']}/cancel"
    assert requests.post(cancel, timeout=10).status_code == 200
    assert webhooks.final()["status"] == "canceled"
    assert time.monotonic() - cancelled_at < 3
    output_images(sd_server.predict(prompt=PROMPT, **SMALL))
