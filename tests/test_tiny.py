import json

from sdcog.weights import component_files, read_pins


def test_tiny_weights_have_every_pinned_file(tiny_weights):
    for pin in read_pins():
        index = tiny_weights / pin.name / "model_index.json"
        files = pin.files or component_files(json.loads(index.read_text()), set())
        for path in files:
            assert (tiny_weights / pin.name / path).is_file(), f"{pin.name}/{path}"


def test_tiny_weights_are_deterministic(tiny_weights, tmp_path):
    from sdcog.tiny import write_tiny_weights
    from sdcog.weights import sha256

    write_tiny_weights(tmp_path)
    for file in (
        "base/unet/diffusion_pytorch_model.safetensors",
        "safety/safety_checker/model.safetensors",
    ):
        assert sha256(tmp_path / file) == sha256(tiny_weights / file)


def test_tiny_model_keeps_the_real_latent_geometry(tiny_weights):
    import json

    vae = json.loads((tiny_weights / "base/vae/config.json").read_text())
    unet = json.loads((tiny_weights / "base/unet/config.json").read_text())
    assert len(vae["block_out_channels"]) == 4  # scale factor 2**3 = 8
    assert vae["latent_channels"] == unet["in_channels"] == 4
    assert unet["sample_size"] * 8 == 512
