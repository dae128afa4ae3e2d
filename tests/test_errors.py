"""What a client is shown of a failure: the message, never a path on the server."""

import tempfile
from pathlib import Path

from sdcog.common import errors


def test_server_paths_become_server_but_urls_and_inputs_stay():
    weights = Path("/models/weights")
    tmp = tempfile.gettempdir()
    shown = errors.public(
        ValueError(f"image: cannot identify image file '{tmp}/x/y.png'"), [weights]
    )
    assert str(shown) == "image: cannot identify image file '<server>'"
    shown = errors.public(OSError(f"no file named a.bin in directory {weights}/cn."), [weights])
    assert isinstance(shown, RuntimeError)
    assert str(shown) == "OSError: no file named a.bin in directory <server>"
    url = "lora_weights: http://host/tmp/x leads to 127.0.0.1"
    assert str(errors.public(ValueError(url), [weights])) == url
    own = "image: '/etc/hostname' is a path on the server"
    assert str(errors.public(ValueError(own), [weights])) == own
