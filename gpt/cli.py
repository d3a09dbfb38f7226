"""Entry-point plumbing: run a `main(argv)` and turn user errors into short messages."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Sequence

from gpt.errors import GPTError


def debug_requested(argv: Sequence[str]) -> bool:
    """True when the user asked for full tracebacks (`--debug` or `GPT_DEBUG=1`)."""
    return "--debug" in argv or "--debug=True" in argv or os.environ.get("GPT_DEBUG", "") not in ("", "0")


def run_main(main: Callable[[list[str]], None], argv: Sequence[str] | None = None) -> None:
    """Call `main(argv)`; print a `GPTError` as one paragraph and exit 2.

    `--debug` is stripped from argv before `main` sees it, so every entry point
    accepts it without declaring it.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a not in ("--debug", "--debug=True")]
    try:
        main(argv)
    except GPTError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
