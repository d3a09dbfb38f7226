"""What resuming must undo: output a killed run wrote after its last checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

from gpt.atomic import write_text_atomic


def rewind_metrics(path: Path, resume_iter: int) -> None:
    """Drop metrics.jsonl lines the resumed run will write again.

    Train lines for steps >= resume_iter and eval lines after it are replayed by the
    resumed run; the eval at resume_iter itself was logged before the checkpoint. A
    torn last line from a kill mid-write is dropped too.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        it = record.get("iter", 0)
        if (record.get("kind") == "eval" and it <= resume_iter) or (record.get("kind") != "eval" and it < resume_iter):
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))
