"""Typed options for every command: dataclasses -> command-line flags, YAML/TOML config files.

Each command has one dataclass; each field carries its help text. A ``--config FILE`` (YAML or
TOML) sets defaults with the same names as the flags (dashes or underscores), flags on the command
line override it, and the resolved options are saved as plain data in the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
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
        kind, optional, is_list = _base_type(hints[f.name])
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help strings with %
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


def cli_names(cls: type) -> set[str]:
    """Names of the fields of ``cls`` that are options (flags and config-file keys)."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("cli") is not False}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _scalar(kind: type, value: Any) -> Any:
    """``value`` as ``kind`` (bool, int, float or str), or ValueError saying what was expected."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ValueError("expected true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
        raise ValueError("expected an integer")
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError("expected a number")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("expected text")
    return value


def coerce(cls: type, name: str, value: Any) -> Any:
    """``value`` (from a config file or a ``NAME=VALUE`` flag) converted to the type of field ``name`` of
    ``cls`` and checked against its choices; ValueError saying what is wrong."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    kind, optional, is_list = _base_type(typing.get_type_hints(cls)[name])
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "auto", "")):
        if optional:
            return None
        raise ValueError("must not be empty")
    if is_list:
        items = value if isinstance(value, list) else [value]
        converted = [_scalar(kind, v) for v in items]
    else:
        converted = _scalar(kind, value)
    choices = field.metadata.get("choices")
    for item in converted if is_list else [converted]:
        if choices and item not in choices:
            raise ValueError(f"choose from {', '.join(map(str, choices))}")
    return converted


def coerce_all(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Every entry of ``values`` coerced to its field of ``cls``; a UserError names ``where`` and the key."""
    out = {}
    for name, value in values.items():
        try:
            out[name] = coerce(cls, name, value)
        except ValueError as err:
            raise UserError(f"{where}: {name.replace('_', '-')} = {value!r}: {err}") from None
    return out


def split_known(values: dict[str, Any], cls: type | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the entries of ``values`` that are options of ``cls``, the rest)."""
    names = cli_names(cls) if cls is not None else set()
    return {k: v for k, v in values.items() if k in names}, {k: v for k, v in values.items() if k not in names}


def resolve(
    cls: type,
    namespace: argparse.Namespace | None = None,
    config_path: str | None = None,
    *,
    file_values: dict[str, Any] | None = None,
    **overrides,
):
    """Build ``cls`` from its defaults, then the config file (``config_path``, or its already read
    ``file_values``), then the flags given on the command line, then ``overrides``.

    Config-file values go through the same type conversion and choices as flags.
    """
    names = cli_names(cls)
    values: dict[str, Any] = {}
    if config_path and file_values is None:
        file_values = load_config_file(config_path)
    if file_values:
        unknown = sorted(set(file_values) - names)
        if unknown:
            raise UserError(f"--config {config_path}: unknown option(s) {', '.join(unknown)}")
        values.update(coerce_all(cls, file_values, f"--config {config_path}"))
    for name in names:
        given = getattr(namespace, name, None)
        if given is not None:
            values[name] = given
    values.update(overrides)
    try:
        return cls(**values)
    except TypeError as err:
        raise UserError(f"bad options: {err}") from None


def check_ranges(options: Any, rules: dict[str, tuple[str, Any]]) -> None:
    """UserError naming the first option outside its range. ``rules[name] = (kind, bound)``, kind one of
    ``">"``, ``">="`` (a finite number above / at least ``bound``) or ``"in"`` ((low, high), low <= x < high).
    None values (option not set) pass; NaN and infinities never do."""
    for name, (kind, bound) in rules.items():
        value = getattr(options, name)
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and kind == ">":
            ok, what = value > bound, f"must be greater than {bound}"
        elif ok and kind == ">=":
            ok, what = value >= bound, f"must be at least {bound}"
        elif ok:
            ok, what = bound[0] <= value < bound[1], f"must be in [{bound[0]}, {bound[1]})"
        else:
            what = "must be a finite number"
        if not ok:
            raise UserError(f"--{name.replace('_', '-')} {value}: {what}")
