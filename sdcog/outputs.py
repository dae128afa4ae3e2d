"""Output files: each prediction's images encoded into a folder of its own, and what an
in-process caller gets back (a Generation: the facts the logs tell Cog's clients, as data)."""

import os
import shutil
import tempfile
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from . import images, protocol, runner


@dataclass(frozen=True)
class Output:
    index: int  # its place among the returned images
    seed: int
    path: Path


@dataclass(frozen=True)
class Generation:
    """One prediction's result: its images, and what its logs say about them."""

    outputs: list[Output]
    flagged: list[int]  # the seeds of the images the safety checker left out
    timings: dict[str, float]  # milliseconds per stage (timings.STAGES)
    deepcache: dict[str, tuple[int, int]]  # UNet -> (calls that reused features, calls)

    @property
    def paths(self) -> list[Path]:
        return [output.path for output in self.outputs]


class OutputFolders:
    """Cog reads a prediction's files after it returns, while the next one (another slot) may
    already be running: the folders of the last SLOTS predictions are kept."""

    def __init__(self) -> None:
        self.folders: deque[Path] = deque()

    def save(self, results: list[tuple[int, Image.Image]], fmt: str, quality: int) -> list[Output]:
        """(seed, image) pairs as files named out-<index>-seed<seed>-<token>.<ext>."""
        # With one prediction per slot, the folder from SLOTS predictions ago is done with.
        while len(self.folders) >= runner.SLOTS:
            shutil.rmtree(self.folders.popleft(), ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix="sdcog-"))
        self.folders.append(folder)
        token = uuid.uuid4().hex[:8]  # unique names: uploads from two predictions never collide

        def save(index: int, seed: int, image: Image.Image) -> Output:
            name = folder / protocol.output_name(index, seed, token)
            return Output(index, seed, images.save_image(image, name, fmt, quality))

        # The encoders release the GIL: one thread per core encodes the outputs side by side.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            jobs = [pool.submit(save, i, seed, image) for i, (seed, image) in enumerate(results)]
            return [job.result() for job in jobs]
