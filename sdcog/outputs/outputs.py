"""Output files: each prediction's images encoded into a folder of its own, and what an
in-process caller gets back (a Generation: the facts the logs tell Cog's clients, as data)."""

import atexit
import os
import shutil
import tempfile
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..common import protocol
from ..request import images
from ..serving import runner
from . import infotext


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
    control_maps: list[Path] = field(default_factory=list)  # return_control_maps: one a slot

    @property
    def paths(self) -> list[Path]:
        """What the prediction returns: the images, then the control maps."""
        return [output.path for output in self.outputs] + self.control_maps


class Encoding:
    """A prediction's images encoded in the background, one thread per core (the encoders
    release the GIL), while the safety checker looks at them: only the kept ones are written.
    As a context manager, what is still queued is dropped when it closes."""

    def __init__(
        self,
        results: list[tuple[int, Image.Image]],
        fmt: str,
        quality: int,
        texts: dict[int, str] | None = None,
    ) -> None:
        """`texts`: each seed's generation data, carried in its file (infotext.py)."""
        self.fmt = fmt
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        texts = texts or {}
        self._jobs = {
            seed: self._pool.submit(images.encode_image, image, fmt, quality,
                                    texts.get(seed) and infotext.save_options(fmt, texts[seed]))
            for seed, image in results
        }  # fmt: skip

    def content(self, seed: int) -> bytes:
        return self._jobs[seed].result()

    def __enter__(self) -> "Encoding":
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _remove(folders: deque[Path]) -> None:
    while folders:
        shutil.rmtree(folders.popleft(), ignore_errors=True)


class OutputFolders:
    """Cog reads a prediction's files after it returns, while the next one (another slot) may
    already be running: the folders of the last SLOTS predictions are kept."""

    def __init__(self) -> None:
        self.folders: deque[Path] = deque()
        # The last ones go when the process exits (not before: a caller may read a generation's
        # files after dropping its generator), so nothing is left in /tmp.
        atexit.register(_remove, self.folders)

    def open(self) -> tuple[Path, str]:
        """A new prediction's folder, and the token that keeps its file names unique (uploads
        from two predictions never collide)."""
        # With one prediction per slot, the folder from SLOTS predictions ago is done with.
        while len(self.folders) >= runner.SLOTS:
            shutil.rmtree(self.folders.popleft(), ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix="sdcog-"))
        self.folders.append(folder)
        return folder, uuid.uuid4().hex[:8]

    def save(self, encoding: Encoding, seeds: list[int], folder: Path, token: str) -> list[Output]:
        """The images of these seeds, in this order, in the prediction's folder as files named
        out-<index>-seed<seed>-<token>.<ext>."""
        extension = images.extension(encoding.fmt)
        outputs = []
        for index, seed in enumerate(seeds):
            path = (folder / protocol.output_name(index, seed, token)).with_suffix(f".{extension}")
            path.write_bytes(encoding.content(seed))
            outputs.append(Output(index, seed, path))
        return outputs

    def save_maps(
        self, slots: list[tuple[str, str]], maps: list[Image.Image], folder: Path, token: str
    ) -> list[Path]:
        """Each slot's (name, kind) control map as a PNG, control-<slot number>-<kind>-<token>."""
        paths = []
        for (slot, kind), image in zip(slots, maps, strict=True):
            path = folder / f"{protocol.control_map_name(slot, kind, token)}.png"
            image.save(path, **images.FORMATS["png"][2])
            paths.append(path)
        return paths
