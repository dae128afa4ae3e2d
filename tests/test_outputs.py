"""Each prediction's files: the folders of the last predictions are kept while Cog may still
read them, and go when the process ends."""

import subprocess
import sys
from pathlib import Path

import pytest

from sdcog.outputs.outputs import OutputFolders
from sdcog.serving.runner import SLOTS

EXITS = """
import sys
from pathlib import Path
from sdcog.generate import Generator
from sdcog.request.request import Request
generation = Generator(Path(sys.argv[1]))(
    Request(prompt="x", num_inference_steps=2, width=128, height=128, seed=1)
)
print(generation.paths[0])
"""


def test_the_last_folders_are_kept_and_the_older_ones_removed():
    folders = OutputFolders()
    opened = [folders.open()[0] for _ in range(SLOTS + 2)]
    assert [f.exists() for f in opened] == [False, False] + [True] * SLOTS
    del folders  # a caller may still read the last generation's files
    assert opened[-1].exists()


@pytest.mark.slow  # about 10 s or more: the fast tier leaves it to script/test --all
def test_a_process_that_ends_leaves_no_folder(tiny_weights):
    out = subprocess.run([sys.executable, "-c", EXITS, str(tiny_weights)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    written = out.strip().splitlines()[-1]
    assert "/sdcog-" in written and not Path(written).exists()
