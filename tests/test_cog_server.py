"""What the pinned Cog server (0.23.1) does that this package cannot change, as the README's
security notes describe it. A Cog upgrade that fixes it fails here, so the notes get updated."""

import requests

from conftest import ServerUnderTest
from sdcog.runner import SLOTS

SMALL = {"prompt": "x", "width": 128, "height": 128, "num_inference_steps": 2}


def test_an_id_with_a_nul_byte_leaks_its_slot(make_weights, tmp_path):
    # Its own server: this leaves it wedged.
    server = ServerUnderTest(make_weights("sd"), tmp_path / "server.log", "sd", env={})
    try:
        for n in range(SLOTS):
            body = {"id": f"evil\u0000{n}", "input": SMALL}
            answer = requests.post(f"{server.url}/predictions", json=body, timeout=60).json()
            assert answer["status"] == "failed" and "NUL byte" in answer["error"]
        # predict() never saw those requests, yet every slot stays taken until a restart.
        for _ in range(3):
            assert server.post(SMALL).status_code == 409
        health = requests.get(f"{server.url}/health-check", timeout=5).json()
        assert health["status"] == "BUSY"
    finally:
        server.stop()
