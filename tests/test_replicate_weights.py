"""replicate_weights: a Replicate SDXL LoRA fine-tune's .tar, made here as its trainer writes it,
served from 127.0.0.1, through Cog's real server."""

import io
import json
import pickle
import tarfile

import pytest
import torch
from adapter_files import write_replicate_tar
from helpers import output_images
from safetensors.torch import load, save

from sdcog.adapters import replicate_weights
from sdcog.adapters.replicate_weights import convert_lora
from sdcog.common.limits import MAX_EMBEDDING_ROWS
from sdcog.fetch.downloads import AdapterCache
from sdcog.fetch.references import Reference
from sdcog.models.pipelines import Pipelines

SMALL = {"num_inference_steps": 3, "width": 256, "height": 256, "seed": 5}


@pytest.fixture(scope="module")
def fine_tune(make_weights, file_server, tmp_path_factory) -> dict[str, str]:
    files = write_replicate_tar(make_weights("sdxl"), tmp_path_factory.mktemp("replicate"), 3)
    return {
        name: file_server.put(f"replicate/{path.name}", path.read_bytes())
        for name, path in files.items()
    }


def run(server, **input) -> list[bytes]:
    """The outputs' pixels (their files also carry the request's settings)."""
    result = server.predict(**{"prompt": "a photo of TOK", **SMALL, **input})
    return [image.tobytes() for image in output_images(result)]


def test_the_lora_layers_are_what_replicate_computes(make_weights, tmp_path):
    # cog-sdxl: out = W x + lora_scale * up(down(x)) for every attention projection.
    files = write_replicate_tar(make_weights("sdxl"), tmp_path, 3)
    with tarfile.open(files["tar"]) as tar:
        raw = tar.extractfile("lora.safetensors").read()
    state = load(raw)
    converted = convert_lora(state, "ref")
    pipe = Pipelines.load(make_weights("sdxl")).base["txt2img"]
    prefix = next(k for k in state if "attn2.processor.to_k_lora" in k).rsplit(".", 2)[0]
    layer = pipe.unet.get_submodule(prefix.replace(".processor.to_k_lora", ".to_k"))
    weight = layer.weight.detach().clone()
    pipe.load_lora_weights(converted, adapter_name="tuned")
    pipe.set_adapters(["tuned"], adapter_weights=[0.6])
    down, up = state[f"{prefix}.down.weight"], state[f"{prefix}.up.weight"]
    x = torch.randn(3, weight.shape[1])
    with torch.no_grad():
        wrapped = pipe.unet.get_submodule(prefix.replace(".processor.to_k_lora", ".to_k"))
        torch.testing.assert_close(wrapped(x), x @ (weight + 0.6 * up @ down).T)
    with pytest.raises(ValueError, match="ref: lora.safetensors holds x.weight, which is not"):
        convert_lora({"x.weight": torch.zeros(1)}, "ref")


def test_a_fine_tune_is_its_lora_and_embeddings_with_its_token_map(server, fine_tune):
    if server.family != "sdxl":
        error = server.failure(prompt="x", replicate_weights=fine_tune["tar"], **SMALL)
        assert "replicate_weights: only SDXL builds take this input" in error
        return
    plain = run(server)
    tuned = run(server, replicate_weights=fine_tune["tar"])
    assert tuned != plain
    # The same LoRA and embeddings given as lora_weights and textual_inversions, with TOK
    # written out as special_params.json maps it, at Replicate's default lora_scale of 0.6.
    same = run(
        server,
        prompt="a photo of <s0><s1>",
        lora_weights=[fine_tune["lora"]],
        lora_scale=0.6,
        textual_inversions=[f"<s0>={fine_tune['<s0>']}", f"<s1>={fine_tune['<s1>']}"],
    )
    assert tuned == same
    assert run(server, replicate_weights=fine_tune["tar"], lora_scale=1.0) != tuned
    # The placeholder means the embeddings: without it only the LoRA applies.
    assert run(server, prompt="a photo of a dog", replicate_weights=fine_tune["tar"]) != run(
        server, prompt="a photo of a dog"
    )
    assert run(server) == plain  # nothing is left behind


def test_a_second_request_reads_nothing_again(server, fine_tune, file_server):
    if server.family != "sdxl":
        pytest.skip("SDXL only (the SD build refuses it: test above)")
    run(server, replicate_weights=fine_tune["tar"])
    before = file_server.count("trained_model.tar")
    result = server.predict(prompt="TOK", replicate_weights=fine_tune["tar"], **SMALL)
    assert result["status"] == "succeeded"
    assert file_server.count("trained_model.tar") == before
    assert "replicate_weights: " + fine_tune["tar"] + " from the cache" in result["logs"]


def tar_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ({"unet.safetensors": b"x"}, "has no lora.safetensors (a full fine-tune, not a LoRA"),
        (
            {
                "lora.safetensors": pickle.dumps({"a": 1}),
                "embeddings.pti": b"",
                "special_params.json": b"{}",
            },
            "lora.safetensors is not a safetensors file",
        ),  # fmt: skip
        (None, "is not an uncompressed .tar archive"),
    ],
)
def test_bad_archives_fail_naming_the_input(server, file_server, fine_tune, members, error):
    if server.family != "sdxl":
        pytest.skip("SDXL only")
    data = b"not a tar at all" * 100 if members is None else tar_of(members)
    url = file_server.put(f"replicate/bad-{abs(hash(error))}.tar", data)
    message = server.failure(prompt="TOK", replicate_weights=url, **SMALL)
    assert message.startswith("replicate_weights: ") and error in message
    assert run(server) == run(server)  # and the server goes on


def test_a_pickled_archive_url_is_refused_before_any_request(server, file_server):
    if server.family != "sdxl":
        pytest.skip("SDXL only")
    before = len(file_server.requests)
    url = f"{file_server.url}/replicate/model.ckpt"
    assert "is pickled weights" in server.failure(prompt="x", replicate_weights=url, **SMALL)
    assert len(file_server.requests) == before


def _members(fine_tune_tar: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(fine_tune_tar)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def parts(make_weights, tmp_path_factory) -> dict[str, bytes]:
    files = write_replicate_tar(make_weights("sdxl"), tmp_path_factory.mktemp("parts"), 4)
    return _members(files["tar"].read_bytes())


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"special_params.json": b"{not json"}, "special_params.json is broken JSON"),
        ({"special_params.json": b"[1, 2]"}, "special_params.json is not a JSON object"),
        ({"special_params.json": b'{"TOK": 1}'}, "special_params.json is not a map of strings"),
        ({"special_params.json": b"\xff\xfe"}, "special_params.json is broken JSON"),
        ({"embeddings.pti": b"[" * 1000}, "embeddings.pti is not a safetensors file"),
    ],
)
def test_broken_members_fail_naming_the_input(tmp_path, file_server, parts, change, error):
    url = file_server.put(f"replicate/broken-{abs(hash(error))}.tar", tar_of(parts | change))
    with pytest.raises(ValueError, match=f"^replicate_weights: {url}: {error}"):
        replicate_weights.fetch(
            AdapterCache(root=tmp_path), Reference.parse(url, "replicate_weights"), 0.6
        )


def test_members_are_bounded_by_their_tar_headers(tmp_path, file_server, parts, monkeypatch):
    url = file_server.put("replicate/bounded.tar", tar_of(parts))
    size = len(parts["lora.safetensors"])
    with monkeypatch.context() as limited:
        limited.setitem(replicate_weights.MAX_TAR_MEMBER_BYTES, "lora.safetensors", size - 1)
        with pytest.raises(
            ValueError, match=f"lora.safetensors is {size} bytes; at most {size - 1}"
        ):
            replicate_weights.fetch(
                AdapterCache(root=tmp_path), Reference.parse(url, "replicate_weights"), 0.6
            )
    rows = torch.zeros(MAX_EMBEDDING_ROWS + 1, 8)
    many = save({"text_encoders_0": rows, "text_encoders_1": rows.clone()})
    url = file_server.put("replicate/many.tar", tar_of(parts | {"embeddings.pti": many}))
    with pytest.raises(ValueError, match=f"embeddings.pti holds {MAX_EMBEDDING_ROWS + 1} tokens"):
        replicate_weights.fetch(
            AdapterCache(root=tmp_path), Reference.parse(url, "replicate_weights"), 0.6
        )


def test_a_placeholder_cannot_blow_the_prompt_up(server, file_server, parts):
    if server.family != "sdxl":
        pytest.skip("SDXL only")
    # A 10-character prompt that its special_params.json makes 25,000 characters long.
    blown = json.dumps({"a": "<s0>" * 6250}).encode()
    url = file_server.put("replicate/blown.tar", tar_of(parts | {"special_params.json": blown}))
    error = server.failure(prompt="a a a a a ", replicate_weights=url, **SMALL)
    assert error.startswith(
        "replicate_weights: its special_params.json makes the prompt 125005 characters long; at "
        "most 20000"
    ), error
