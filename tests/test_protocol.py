"""The log lines and names other code reads: what is written reads back the same."""

import base64

from sdcog.common import protocol


def test_lines_read_back_as_written():
    logs = "\n".join([
        "txt2img 512x512, DDIM, seed 5",
        protocol.deepcache_line("base", 33, 50),
        protocol.seed_line(0, 5), protocol.seed_line(1, 6), protocol.seed_line(2, 7),
        protocol.flagged_line(1, 6),
        protocol.timings_line({"read": 2.4, "denoise": 2210.2}),
    ])  # fmt: skip
    assert protocol.output_seeds(logs) == [(5, False), (6, True), (7, False)]
    assert protocol.kept_seeds(logs) == [5, 7]
    assert protocol.timings(logs) == {"read": 2.0, "denoise": 2210.0}
    assert protocol.timings(logs, protocol.SETUP_TIMINGS) == {}
    assert protocol.deepcache_counts(logs) == {"base": (33, 50)}


def test_cog_errors_lose_cogs_prefixes_only():
    error = "Prediction failed: Async prediction failed: ValueError: image: could not be read"
    assert protocol.error_message(error) == "image: could not be read"
    assert protocol.error_message("prompt: too long") == "prompt: too long"


def test_an_answer_saves_under_its_seeds_and_never_overwrites(tmp_path):
    png = "data:image/png;base64," + base64.b64encode(b"one").decode()
    jpeg = "data:image/jpeg;base64," + base64.b64encode(b"two").decode()
    result = {
        "output": [png, jpeg],
        "logs": protocol.seed_line(0, 3) + "\n" + protocol.seed_line(1, 4),
    }
    first = protocol.save(result, tmp_path, "20261128-101010")
    assert [p.name for p in first] == ["out-0-seed3-20261128-101010.png",
                                       "out-1-seed4-20261128-101010.jpg"]  # fmt: skip
    again = protocol.save(result, tmp_path, "20261128-101010")  # the same second
    assert [p.name for p in again] == ["out-0-seed3-20261128-101010-2.png",
                                       "out-1-seed4-20261128-101010-2.jpg"]  # fmt: skip
    assert first[0].read_bytes() == b"one" and again[1].read_bytes() == b"two"


def test_previews_are_read_behind_a_progress_bar():
    logs = "\r  0%|   | 0/6 [00:00<?, ?it/s]preview: output 0 step 2\npreview: output 1 step 2\n"
    assert protocol.previews(logs) == [(0, 2), (1, 2)]
    assert protocol.preview_line(1, 2) in logs
    result = {"logs": logs + "output 0: seed 1\n", "output": ["p0", "p1", "image"]}
    assert protocol.final_outputs(result) == ["image"]


def test_control_maps_come_after_the_images_and_save_by_slot(tmp_path):
    png = "data:image/png;base64," + base64.b64encode(b"map").decode()
    logs = "\n".join([protocol.preview_line(0, 2), protocol.seed_line(0, 5),
                      protocol.control_map_line("controlnet_2", "depth")])  # fmt: skip
    result = {"logs": logs, "output": ["preview", "image", png]}
    assert protocol.control_maps(logs) == [("controlnet_2", "depth")]
    assert protocol.final_outputs(result) == ["image"]
    [path] = protocol.save_control_maps(result, tmp_path, "20261128-101010")
    assert path.name == "control-2-depth-20261128-101010.png" and path.read_bytes() == b"map"


def test_data_uris_round_trip():
    uri = protocol.data_uri(b"\x89PNG bytes", "image/jpeg")
    assert uri.startswith("data:image/jpeg;base64,")
    assert protocol.read_data_uri(uri) == ("jpg", b"\x89PNG bytes")
