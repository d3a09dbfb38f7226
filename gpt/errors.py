"""The one exception type for mistakes a user can make and fix.

Raise `GPTError` with a sentence that names the problem and the fix; the entry
points catch it once (see `gpt.cli.run_main`) and print it without a traceback.
"""


class GPTError(Exception):
    """A user-facing error: its message is shown as is, without a traceback."""
