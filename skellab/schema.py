"""Checking untrusted dicts against the dataclasses they claim to be: one-line errors naming the field.

Configs come back from checkpoints, JSON manifests and ``--set key=value`` flags. Before a
model is built from one, every field is checked for its type (from the dataclass's
annotations) and for a sane range, so ``encoder_width: "abc"`` or ``num_tokens: 10**9``
stops with ``SkellabError("<where>: field 'num_tokens' must be …")`` instead of a traceback
or a 64 GB allocation.

>>> cfg = validate_config(AutoencoderConfig, payload["config"], where="ae.pt",
...                       ranges={"num_tokens": SIZE_RANGE})
>>> cfg = apply_overrides(cfg, ["lr=3e-4", "batch_size=16"], where="--set")

Ranges come from, in order: the ``ranges`` argument, ``field(metadata={"range": (lo, hi)})``
on the dataclass, then the defaults: ints in ``0 .. 2**31 - 1``, floats finite.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Iterable, Mapping

from .errors import SkellabError

SIZE_RANGE = (1, 65536)  # widths, token counts, heads, blocks: anything that sizes a tensor
DEFAULT_INT_RANGE = (0, 2**31 - 1)
_MISSING = object()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = getattr(args[0], "__name__", "values") if args else "values"
        return f"a list of {inner}"
    if tp is type(None):
        return "null"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to annotation ``tp`` (int → float, list → tuple), or SkellabError."""

    def bad() -> SkellabError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return SkellabError(f"{where} must be {_type_name(tp)}, got {shown}")

    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin is typing.Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool) or value in [
            a for a in typing.get_args(tp) if isinstance(a, bool)
        ]:
            return value
        raise bad()
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message names the bad item
            return _coerce(value, options[0], where)
        for arg in options:
            try:
                return _coerce(value, arg, where)
            except SkellabError:
                continue
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):
                raise SkellabError(f"{where} must be a finite number, got {value!r}")
            return float(value)
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise SkellabError(f"{where} must have {len(args)} entries, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        elif args:
            items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            items = list(value)
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad()
        return value
    return value  # an annotation we do not know how to check: left to the dataclass


def _check_range(value: Any, rng: tuple[Any, Any] | None, where: str) -> None:
    if rng is None or value is None:
        return
    lo, hi = rng
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            span = f"{lo}..{hi}" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
            raise SkellabError(f"{where} must be in {span}, got {v!r}")


def _field_range(f: dataclasses.Field, tp: Any, ranges: Mapping[str, tuple[Any, Any]] | None):
    if ranges and f.name in ranges:
        return ranges[f.name]
    if "range" in f.metadata:
        return f.metadata["range"]
    base = {typing.get_origin(tp)} | set(typing.get_args(tp)) | {tp}
    if int in base and float not in base:
        return DEFAULT_INT_RANGE
    return None


def validate_config(
    cls: type,
    data: Any,
    *,
    where: str = "config",
    ranges: Mapping[str, tuple[Any, Any]] | None = None,
    allow_unknown: bool = False,
    require_all: bool = False,
) -> Any:
    """Build dataclass ``cls`` from the untrusted mapping ``data``, checking every field.

    data          : a dict of field → value (e.g. ``payload["config"]`` of a checkpoint)
    where         : names the source in messages (a path, ``"--set"``)
    ranges        : field → (lo, hi), inclusive, either end None for open; for lists, per item
    allow_unknown : drop keys the dataclass lacks (a newer writer) instead of refusing them
    require_all   : refuse a missing field instead of taking its default
    returns       : ``cls(**checked)``; any error from ``cls.__post_init__`` is a SkellabError too.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise SkellabError(f"{where}: config must be a mapping of field names to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown and not allow_unknown:
        raise SkellabError(f"{where}: unknown config field {unknown[0]!r} (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if require_all or no_default:
                raise SkellabError(f"{where}: config field {name!r} is missing")
            continue
        tp = hints.get(name, Any)
        label = f"{where}: field {name!r}"
        values[name] = _coerce(data[name], tp, label)
        _check_range(values[name], _field_range(f, tp, ranges), label)
    try:
        return cls(**values)
    except SkellabError as exc:
        raise SkellabError(f"{where}: {exc}") from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise SkellabError(f"{where}: invalid {cls.__name__} ({exc.__class__.__name__}: {exc})") from exc


def parse_value(text: str, tp: Any, where: str) -> Any:
    """A ``--set`` value string → the Python value for annotation ``tp`` (bool, int, float, str, lists)."""
    text = text.strip()
    base = {typing.get_origin(tp)} | set(typing.get_args(tp)) | {tp}
    if text.lower() in ("none", "null") and type(None) in base:
        return None
    if bool in base and text.lower() in ("true", "false", "1", "0", "yes", "no"):
        return text.lower() in ("true", "1", "yes")
    if int in base and float not in base:
        try:
            return int(text)
        except ValueError:
            pass
    if float in base:
        try:
            return float(text)
        except ValueError:
            pass
    if str in base and not (tuple in base or list in base):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # _coerce names the expected type


def apply_overrides(
    config: Any,
    items: Iterable[str] | Mapping[str, Any],
    *,
    where: str = "--set",
    ranges: Mapping[str, tuple[Any, Any]] | None = None,
) -> Any:
    """A copy of dataclass instance ``config`` with ``key=value`` strings (or a dict) applied and checked."""
    cls = type(config)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    merged = {name: getattr(config, name) for name in fields}
    pairs = items.items() if isinstance(items, Mapping) else None
    if pairs is None:
        pairs = []
        for item in items:
            key, sep, text = str(item).partition("=")
            key = key.strip()
            if not sep or not key:
                raise SkellabError(f"{where}: expected key=value, got {item!r}")
            if key not in fields:
                raise SkellabError(f"{where}: unknown field {key!r} (known: {', '.join(sorted(fields))})")
            pairs.append((key, parse_value(text, hints.get(key, Any), f"{where} {key}")))
    for key, value in pairs:
        if key not in fields:
            raise SkellabError(f"{where}: unknown field {key!r} (known: {', '.join(sorted(fields))})")
        merged[key] = value
    return validate_config(cls, merged, where=where, ranges=ranges)
