"""AUTOMATIC1111's prompt emphasis syntax, read into compel's structures so it is encoded the way
compel weights its own syntax.

- `(text)` multiplies the weight of text by 1.1, `[text]` divides it by 1.1; they nest.
- `(text:1.3)` multiplies it by 1.3 instead (inside other brackets, their factors apply too).
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal characters.
- A bracket with no partner is literal; one never closed weights everything after it.
- `BREAK` (the word, in capitals) starts a new 77-token chunk: the parts are encoded separately
  and their embeddings put side by side, as compel's `.and()` does.
"""

import re

from compel.prompt_parser import Conjunction, FlattenedPrompt, Fragment

UP = 1.1
# An escape, a bracket, an explicit weight closing a round bracket, or plain text.
TOKEN = re.compile(
    r"\\(?P<escaped>[()\[\]\\])"
    r"|(?P<open>[(\[])"
    r"|:\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)"
    r"|(?P<close>[)\]])"
    r"|(?P<text>[^\\()\[\]:]+|[\\:])"
)
BREAK = re.compile(r"\s*\bBREAK\b\s*")


def fragments(text: str) -> list[tuple[str, float]]:
    """(text, weight) runs of one BREAK-free part, neighbours of equal weight merged."""
    runs: list[list] = []  # [text, weight]
    opened: dict[str, list[int]] = {"(": [], "[": []}  # bracket -> start indices into runs

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group(match.lastgroup)
        if kind == "open":
            opened[value].append(len(runs))
        elif kind == "weight" and opened["("]:
            scale(opened["("].pop(), float(value))
        elif kind == "close" and opened["(" if value == ")" else "["]:
            start = opened["(" if value == ")" else "["].pop()
            scale(start, UP if value == ")" else 1 / UP)
        else:  # text, an escaped character, or a bracket or weight with nothing to close
            runs.append([value if kind != "weight" else match.group(0), 1.0])
    for start in opened["("]:
        scale(start, UP)
    for start in opened["["]:
        scale(start, 1 / UP)

    merged: list[list] = []
    for run_text, weight in runs:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += run_text
        else:
            merged.append([run_text, weight])
    return [(t, w) for t, w in merged if t] or [("", 1.0)]


def conjunction(text: str) -> Conjunction:
    """The prompt as compel's Conjunction: one FlattenedPrompt per BREAK-separated part."""
    parts = BREAK.split(text)
    return Conjunction(
        [FlattenedPrompt([Fragment(t, w) for t, w in fragments(part)]) for part in parts]
    )
