"""Typed `--key=value` flags and flat YAML files for any config dataclass.

One parser serves every entry point (train, sample, prepare, eval, export, bench):
a config is a dataclass whose fields are plain types (int, float, bool, str, or
Optional of them) or nested dataclasses (sections). Keys are flat, nanoGPT style:
a section's fields are addressed by their own names, which must be unique. Each
field carries a one-line description (`opt(default, "...")`) that `--help` shows.
`parse_args` is what an entry point calls: `--help` prints every key and exits 0,
anything wrong is a GPTError, in every script alike.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from gpt.errors import GPTError

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def opt(default: Any, help: str) -> Any:
    """A config field with its default and the one-line description `--help` shows."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """Where a flat key lives: its section path, its type, its default and its description."""

    path: tuple[str, ...]
    type: type
    optional: bool
    default: Any
    help: str = ""


def field_specs(cls: type) -> dict[str, FieldSpec]:
    """Flat key -> FieldSpec for a (possibly sectioned) config dataclass."""
    specs: dict[str, FieldSpec] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            for key, sub in field_specs(hint).items():
                if key in specs:
                    raise TypeError(f"config key {key!r} appears in two sections of {cls.__name__}")
                specs[key] = dataclasses.replace(sub, path=(f.name,) + sub.path)
            continue
        base, optional = _unwrap_optional(hint)
        default = f.default if f.default is not dataclasses.MISSING else None
        specs[f.name] = FieldSpec((f.name,), base, optional, default, f.metadata.get("help", ""))
    return specs


def _unwrap_optional(hint: Any) -> tuple[type, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _type_name(spec: FieldSpec) -> str:
    name = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}[spec.type]
    return f"{name} or None" if spec.optional else name


def unknown_key_error(key: str, known: Sequence[str], where: str) -> GPTError:
    """The error for a key no config has, naming the closest valid keys."""
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return GPTError(f"unknown config key {key!r} {where}.{hint} Run with --help to list every key with its default.")


def choice(key: str, value: str, allowed: Sequence[str]) -> None:
    """The one check for a key that takes one of a few names."""
    if value not in allowed:
        raise GPTError(f"--{key}={value!r} is not one of {', '.join(allowed)}.")


def parse_string(key: str, raw: str, spec: FieldSpec) -> Any:
    """Convert a command-line string to the key's type, or explain why it cannot be."""
    text = raw.strip()
    if spec.optional and text.lower() in ("none", "null", ""):
        return None
    try:
        if spec.type is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if spec.type is int:
            value = float(text) if any(c in text.lower() for c in ".e") else int(text)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if spec.type is float:
            return float(text)
        return raw
    except ValueError:
        raise GPTError(f"--{key}={raw}: expected {_type_name(spec)}, got {raw!r}.") from None


def check_value(key: str, value: Any, spec: FieldSpec, source: str) -> Any:
    """Check a value that arrived already typed (from YAML); ints are accepted as floats."""
    if value is None and spec.optional:
        return None
    ok = (
        (spec.type is bool and isinstance(value, bool))
        or (spec.type is int and isinstance(value, int) and not isinstance(value, bool))
        or (spec.type is float and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (spec.type is str and isinstance(value, str))
    )
    if not ok:
        shown = "a mapping" if isinstance(value, dict) else repr(value)
        raise GPTError(f"{source}: key {key!r} must be {_type_name(spec)}, got {shown}.")
    return float(value) if spec.type is float else value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping, with file-and-line errors for bad syntax."""
    path = Path(path)
    if not path.is_file():
        raise GPTError(f"config file {str(path)!r} does not exist. Pass a YAML file such as configs/shakespeare_char.yaml.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise GPTError(f"cannot read config file {str(path)!r}: {err}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise GPTError(f"{path}: YAML syntax error{where}: {problem}. Fix the file and run again.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GPTError(f"{path}: expected a mapping of `key: value` lines at the top level, got {type(data).__name__}.")
    return data


def split_argv(argv: Sequence[str], allow_positional: bool) -> tuple[list[str], dict[str, str]]:
    """Split argv into positional arguments and `--key=value` overrides (last one wins)."""
    positional: list[str] = []
    overrides: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                raise GPTError(f"argument {arg!r} has no value: write --{key}=VALUE (for switches, --{key}=True).")
            overrides[key.replace("-", "_")] = value
        elif allow_positional:
            positional.append(arg)
        else:
            raise GPTError(f"unexpected argument {arg!r}: every option is written --key=value.")
    return positional, overrides


def build_config(cls: type, file_values: Mapping[str, Any], cli_values: Mapping[str, str], source: str = "config") -> Any:
    """Defaults, then YAML values, then command-line strings: typed and checked."""
    specs = field_specs(cls)
    values: dict[str, Any] = {}
    for key, value in file_values.items():
        if key not in specs:
            raise unknown_key_error(key, list(specs), f"in {source}")
        values[key] = check_value(key, value, specs[key], source)
    for key, raw in cli_values.items():
        if key not in specs:
            raise unknown_key_error(key, list(specs), "on the command line")
        values[key] = parse_string(key, raw, specs[key])
    return _instantiate(cls, values)


def _instantiate(cls: type, values: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            kwargs[f.name] = _instantiate(hint, values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def flatten(config: Any) -> dict[str, Any]:
    """The flat key -> value view of a config, as written to config.yaml and checkpoints."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flatten(value))
        else:
            flat[f.name] = value
    return flat


def help_text(cls: type, usage: str) -> str:
    """A listing of every key: its description, type and default, for --help."""
    lines = [usage, "", "options (--key=value):"]
    for key, spec in field_specs(cls).items():
        lines.append(f"  --{key:<26} {spec.help}")
        lines.append(f"  {'':<28} {_type_name(spec)}, default {spec.default!r}")
    return "\n".join(lines)


def wants_help(argv: Sequence[str]) -> bool:
    return "--help" in argv or "-h" in argv


def parse_args(cls: type, argv: Sequence[str], usage: str, *, config_file: Optional[Path] = None,
               epilog: str = "") -> Any:
    """An entry point's config from argv: defaults < YAML file < `--key=value`.

    With `config_file` (the default YAML), one positional argument may name another
    file; without it, positional arguments are an error. `--help`/`-h` prints every
    key with its description and exits 0. Checks beyond types are the caller's.
    """
    if wants_help(argv):
        print(help_text(cls, usage) + (f"\n\n{epilog}" if epilog else ""))
        raise SystemExit(0)
    positional, overrides = split_argv(argv, allow_positional=config_file is not None)
    if len(positional) > 1:
        raise GPTError(f"expected at most one config file, got {positional}. {usage}")
    if config_file is None:
        return build_config(cls, {}, overrides)
    path = Path(positional[0]) if positional else config_file
    return build_config(cls, read_yaml(path), overrides, source=str(path))
