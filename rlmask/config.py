"""Typed options for every command: dataclasses -> command-line flags, YAML/TOML config files.

Each command has one dataclass; each field carries its help text. A ``--config FILE`` (YAML or
TOML) sets defaults with the same names as the flags (dashes or underscores), flags on the command
line override it, and the resolved options are saved as plain data in the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from rlmask.errors import UserError


def option(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with help text (``extra`` goes to argparse: ``choices``, ``metavar``)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=default: list(d), metadata={"help": help, **extra})
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def _base_type(annotation: Any) -> tuple[type, bool, bool]:
    """(element type, is_optional, is_list) of a field annotation such as ``int | None`` or ``list[str]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _, is_list = _base_type(args[0])
        return inner, True, is_list
    if origin is list:
        return typing.get_args(annotation)[0], False, True
    return annotation, False, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` (defaults are applied later, so a config file can sit between)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        if dataclasses.is_dataclass(hints[f.name]):  # nested options: flat flags
            add_dataclass_arguments(parser, hints[f.name], skip)
            continue
        kind, optional, is_list = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        for key in ("choices", "metavar"):
            if key in f.metadata:
                kwargs[key] = f.metadata[key]
        if kind is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif is_list:
            parser.add_argument(_flag(f.name), type=kind, nargs="+", action="extend", **kwargs)
        else:
            parser.add_argument(_flag(f.name), type=_none_or(kind) if optional else kind, **kwargs)


def _none_or(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "auto", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file of options; keys may use dashes or underscores."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0]
        raise UserError(f"--config {path}: cannot parse ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _flat_names(cls: type) -> set[str]:
    hints = typing.get_type_hints(cls)
    names = set()
    for f in dataclasses.fields(cls):
        names |= _flat_names(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else {f.name}
    return names


def _build(cls: type, values: dict[str, Any]):
    """``cls`` from flat ``values``; nested dataclass fields take the names that belong to them."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def resolve(cls: type, namespace: argparse.Namespace | None = None, config_path: str | None = None, **overrides):
    """Build ``cls`` from its defaults, then the config file, then the flags given on the command line,
    then ``overrides``. Nested dataclass fields (e.g. an agent's options) are set by their flat names."""
    names = _flat_names(cls)
    values: dict[str, Any] = {}
    if config_path:
        file_values = load_config_file(config_path)
        unknown = sorted(set(file_values) - names)
        if unknown:
            raise UserError(f"--config {config_path}: unknown option(s) {', '.join(unknown)}")
        values.update(file_values)
    for name in names:
        given = getattr(namespace, name, None)
        if given is not None:
            values[name] = given
    values.update(overrides)
    try:
        return _build(cls, values)
    except TypeError as err:
        raise UserError(f"bad options: {err}") from None


def to_plain(obj: Any) -> Any:
    """Dataclasses, paths and tuples as JSON-able plain data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename), so a crash never leaves half a file."""
    from rlmask.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(to_plain(data), indent=2) + "\n").encode())
