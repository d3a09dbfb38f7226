"""Stream a corpus as pieces of text of bounded size, without ever holding a whole file.

Inputs: a file, or a folder searched recursively for `.txt`, `.jsonl` (one JSON
object per line, text under `--text_key`) and `.parquet` (a string column named
`--text_key`); `.txt` and `.jsonl` may be gzipped (`.gz`). Files are read in
sorted path order, so the token stream is the same on every run. A `.txt` file
is one document; each JSONL line or parquet row is one document.

The stream is a sequence of `Piece(text, new_doc)`: `new_doc` is True on the
first piece of every document after the first, where the tokenizer's separator
goes. Long documents are cut at line ends (or, for a line longer than a block,
at a character boundary) into blocks of about `block_bytes`.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from gpt.errors import GPTError

SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".parquet")
BLOCK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Piece:
    text: str
    new_doc: bool


def input_files(path: str) -> list[Path]:
    """The files of `--input`, sorted; a folder is searched recursively for the supported suffixes."""
    src = Path(path)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        if not files:
            raise GPTError(f"--input={path} is a folder with no {', '.join(SUFFIXES)} files in it.")
        return files
    if src.is_file():
        return [src]
    raise GPTError(f"--input={path} does not exist: give a UTF-8 text file or a folder of "
                   f"{', '.join(SUFFIXES)} files.")


class Corpus:
    """The pieces of a list of files (or of one in-memory text), with the input bytes read so far."""

    def __init__(self, files: list[Path], text_key: str = "text", text: Optional[str] = None,
                 block_bytes: int = BLOCK_BYTES):
        self.files, self.text_key, self.text, self.block_bytes = files, text_key, text, block_bytes
        self.total_bytes = len(text.encode("utf-8")) if text is not None else sum(f.stat().st_size for f in files)
        self.bytes_read = 0

    def pieces(self) -> Iterator[Piece]:
        self.bytes_read = 0
        first = True
        for doc in self._documents():
            for i, text in enumerate(doc):
                yield Piece(text, new_doc=(i == 0 and not first))
            first = False

    def _documents(self) -> Iterator[Iterator[str]]:
        """Each document as an iterator over its blocks of text."""
        if self.text is not None:
            yield self._blocks_of_string(self.text)
            return
        done = 0
        for path in self.files:
            name = path.name
            if name.endswith(".parquet"):
                yield from ([t] for t in self._parquet_texts(path, done))
            elif name.endswith((".jsonl", ".jsonl.gz")):
                yield from ([t] for t in self._jsonl_texts(path, done))
            else:
                yield self._text_blocks(path, done)
            done += path.stat().st_size
            self.bytes_read = done

    def _blocks_of_string(self, text: str) -> Iterator[str]:
        step = max(1, self.block_bytes // 4)
        for start in range(0, len(text), step):
            self.bytes_read = min(self.total_bytes, start * 4)
            yield text[start:start + step]

    def _text_blocks(self, path: Path, done: int) -> Iterator[str]:
        """A text file in blocks cut after a newline, with newlines normalised as Python's text mode does."""
        with _open_binary(path) as (raw, stream):
            carry, offset = b"", 0
            while True:
                try:
                    chunk = stream.read(self.block_bytes)
                except (OSError, EOFError) as err:
                    raise GPTError(f"cannot read {path}: {err}.") from None
                data = carry + chunk
                if not data:
                    return
                cut = len(data) if not chunk else _cut_point(data)
                block, carry = data[:cut], data[cut:]
                try:
                    text = block.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise GPTError(f"{path} is not UTF-8 text ({err.reason} at byte {offset + err.start}). "
                                   "Convert it to UTF-8 first.") from None
                offset += len(block)
                self.bytes_read = done + raw.tell()
                yield text.replace("\r\n", "\n").replace("\r", "\n")

    def _jsonl_texts(self, path: Path, done: int) -> Iterator[str]:
        with _open_binary(path) as (raw, stream):
            for number, line in enumerate(stream, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = record[self.text_key]
                except (ValueError, KeyError, TypeError) as err:
                    raise GPTError(f"{path}, line {number}: expected a JSON object with a {self.text_key!r} string "
                                   f"({type(err).__name__}: {err}). Pick the field with --text_key=NAME.") from None
                if not isinstance(text, str):
                    raise GPTError(f"{path}, line {number}: {self.text_key!r} holds {type(text).__name__}, not text.")
                if number % 1024 == 0:
                    self.bytes_read = done + raw.tell()
                yield text

    def _parquet_texts(self, path: Path, done: int) -> Iterator[str]:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise GPTError(f"reading {path} needs pyarrow: `pip install -r requirements.txt`.") from None
        try:
            table = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises its own ArrowInvalid / OSError family
            raise GPTError(f"{path} is not a readable parquet file: {err}.") from None
        columns = table.schema_arrow.names
        if self.text_key not in columns:
            raise GPTError(f"{path} has no column {self.text_key!r} (its columns: {', '.join(columns)}). "
                           "Pick the text column with --text_key=NAME.")
        groups = max(1, table.num_row_groups)
        size = path.stat().st_size
        for g in range(table.num_row_groups):
            for text in table.read_row_group(g, columns=[self.text_key]).column(0).to_pylist():
                if text is not None:
                    yield text
            self.bytes_read = done + size * (g + 1) // groups


def _cut_point(data: bytes) -> int:
    """Where to end a block: after its last newline, else after its last whole UTF-8 character."""
    newline = data.rfind(b"\n")
    if newline >= 0:
        return newline + 1
    lead = len(data) - 1
    while lead > 0 and data[lead] & 0xC0 == 0x80:  # continuation bytes: walk back to the character's lead
        lead -= 1
    width = 1 if data[lead] < 0x80 else 2 if data[lead] < 0xE0 else 3 if data[lead] < 0xF0 else 4
    cut = len(data) if len(data) - lead >= width else lead
    if cut > 1 and data[cut - 1:cut] == b"\r":
        cut -= 1  # keep a "\r\n" pair together for the newline normalisation
    return cut or len(data)


class _open_binary:
    """Context manager yielding (raw file, decompressed stream) for plain and .gz files."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> tuple[BinaryIO, BinaryIO]:
        try:
            self.raw = open(self.path, "rb")
        except OSError as err:
            raise GPTError(f"cannot read {self.path}: {err}.") from None
        self.stream = gzip.GzipFile(fileobj=self.raw) if self.path.name.endswith(".gz") else self.raw
        return self.raw, self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.close()
        self.raw.close()
