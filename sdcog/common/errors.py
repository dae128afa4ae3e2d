"""What a failed prediction tells its client: the message, without the server's own paths.

Our refusals start with the input's name (ValueError). What a library raises on hostile input is
turned into a message by the module that called it; anything still unforeseen keeps its type and
text, so the client sees what went wrong. Either way, paths under the server's temporary folder,
its caches, its weights and its installed packages become `<server>`: they say nothing to a
client and much to an attacker.
"""

import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _server_paths(folders: list[Path]) -> re.Pattern[str]:
    roots = {tempfile.gettempdir(), *map(str, folders), str(ROOT), sys.prefix, sys.base_prefix,
             str(Path.home())}  # fmt: skip
    roots = sorted({os.path.abspath(r) for r in roots if r} - {"/"}, key=len, reverse=True)
    # A root where a path starts (not inside a URL), and the rest of the path after it, up to a
    # quote, space or bracket.
    alternatives = "|".join(map(re.escape, roots))
    return re.compile(f"(?<![\\w.:/-])(?:{alternatives})(?:/[^\\s'\"()\\[\\],;]*)?")


def public(error: Exception, folders: list[Path]) -> Exception:
    """The exception a client is shown for `error`: ours keep their text, others are prefixed
    with their type; paths under the server's own `folders` (weights, caches), its temporary
    folder, its code and its packages are replaced either way."""
    text = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
    scrubbed = _server_paths(folders).sub("<server>", text)
    return ValueError(scrubbed) if isinstance(error, ValueError) else RuntimeError(scrubbed)
