"""Each prediction's files: the folders of the last predictions are kept while Cog may still
read them, and go when the generator goes or the process ends."""

import subprocess
import sys
from pathlib import Path

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
    del folders  # the generator gone: its folders with it
    assert not any(f.exists() for f in opened)


def test_a_process_that_ends_leaves_no_folder(tiny_weights):
    out = subprocess.run([sys.executable, "-c", EXITS, str(tiny_weights)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    written = out.strip().splitlines()[-1]
    assert "/sdcog-" in written and not Path(written).exists()
