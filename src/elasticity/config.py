"""Typed, frozen dataclasses are the only config schema; YAML files and CLI flags only hold values.

A command's config is a dataclass whose fields are scalars, tuples or nested dataclasses. `load_config`
merges, in order: the dataclass defaults, a YAML file (`--config`), and dotted overrides
(`--train.lr 1e-5`). Unknown keys and wrong types raise `UserError` naming the key.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import io
import json
import re
import textwrap
import tokenize
import types
from functools import cache
from pathlib import Path
from typing import Any, Literal, Mapping, NewType, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from elasticity.errors import UserError

T = TypeVar("T")

# A string that names an input of a stage: a file, a folder, a run directory or a hub id. Stage names hash such a
# field by what it identifies (its content, a run's name, a hub commit), never by where it lies (`runs.portable`).
InputPath = NewType("InputPath", str)


def is_input_path(tp: Any) -> bool:
    return tp is InputPath
_NONE_WORDS = {"none", "null", "~"}


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _strip_optional(tp: Any) -> Any:
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else Union[tuple(args)]


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting only where lossless (int -> float, list -> tuple)."""
    if _is_optional(tp):
        return None if value is None else _coerce(_strip_optional(tp), value, key)
    if is_input_path(tp):
        tp = str
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and hasattr(tp, "parse"):  # a section given by one string (a model's source)
            return tp.parse(value)
        if not isinstance(value, Mapping):
            raise UserError(f"config key '{key}' must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is Literal:
        if value not in get_args(tp):
            raise UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' must be a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise UserError(f"config key '{key}' must have {len(args)} items, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for '{key}'")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a plain mapping, rejecting unknown keys and wrong types by name."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise UserError(
                f"unknown config key '{prefix}{key}' (known keys: {', '.join(sorted(prefix + n for n in names))})"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            default = _default(f)
            if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
                # A section given in part keeps its *parent's* defaults for the rest (e.g. the pre-training
                # recipe's batch size when only --train.lr is given), not the section class's own defaults.
                value = _merge(to_dict(default), value)
            kwargs[f.name] = _coerce(hints[f.name], value, prefix + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"missing config key '{prefix}{f.name}' (set it in --config or with --{prefix}{f.name})")
    return cls(**kwargs)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _merge(base: dict, update: Mapping) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, Mapping) else value
    return out


def to_dict(obj: Any) -> Any:
    """Plain, YAML/JSON-ready form of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def config_hash(payload: Any) -> str:
    """Stable hash of a config (or any JSON-able payload): canonical JSON, sha256, 12 hex digits."""
    text = json.dumps(to_dict(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _docstring_attributes(doc: str) -> dict[str, str]:
    """`name: text` entries of a Google-style "Attributes:" section (continuation lines indented deeper)."""
    out: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    if "Attributes:" not in lines:
        return out
    name = None
    for line in lines[lines.index("Attributes:") + 1:]:
        if line and not line.startswith(" "):
            break  # the next section
        entry = re.match(r"^    (\w+)(?: \([^)]*\))?: (.*)$", line)
        if entry:
            name, out[entry.group(1)] = entry.group(1), entry.group(2).strip()
        elif name and line.strip():
            out[name] += " " + line.strip()
    return out


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: its comment in the class source (a field line's trailing comment, and the
    comment lines right below that continue it), else its entry in the class docstring's Attributes section.
    Inherited fields are documented where they are declared.

    >>> from elasticity.data.records import Fields
    >>> field_docs(Fields)["prompt"]
    "the field that holds a pair's prompt"
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        comments = {t.start[0]: t.string.lstrip("#").strip() for t in tokenize.generate_tokens(io.StringIO(source).readline)
                    if t.type == tokenize.COMMENT}
        lines = source.splitlines()
        body = ast.parse(source).body[0].body
        own = _docstring_attributes(klass.__doc__ or "")
        for node in body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            parts = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            n = node.end_lineno + 1
            while parts and n <= len(lines) and lines[n - 1].strip().startswith("#"):  # the comment goes on
                parts.append(comments[n])
                n += 1
            text = " ".join(parts) or own.get(node.target.id, "")
            if text:
                docs[node.target.id] = text
    return docs


def leaf_fields(cls: type, prefix: str = "", defaults: Any = None) -> list[tuple[str, Any, Any, str]]:
    """(dotted key, annotation, default, documentation) for every scalar or tuple field of `cls`, recursing
    into sections. A section's defaults are its parent's (e.g. the pre-training recipe under `train`), its
    fields' documentation its own class's."""
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if dataclasses.is_dataclass(tp):
            out.extend(leaf_fields(tp, prefix + f.name + ".", default))
        else:
            out.append((prefix + f.name, tp, default, docs.get(f.name, "")))
    return out


def parse_flag(tp: Any, raw: str | list[str], key: str) -> Any:
    """Turn a command-line string (or list of strings, for tuples) into a value for annotation `tp`."""
    if _is_optional(tp):
        if isinstance(raw, str) and raw.lower() in _NONE_WORDS:
            return None
        return parse_flag(_strip_optional(tp), raw, key)
    if is_input_path(tp):
        tp = str
    if get_origin(tp) is tuple:
        items = raw if isinstance(raw, list) else [raw]
        args = get_args(tp)
        item_types = [args[0]] * len(items) if args[-1] is Ellipsis else list(args)
        if len(item_types) != len(items):
            raise UserError(f"--{key} takes {len(item_types)} values, got {len(items)}")
        return [parse_flag(t, s, key) for t, s in zip(item_types, items)]
    if tp is bool:
        low = raw.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise UserError(f"--{key} must be true or false, got {raw!r}")
        return low in ("true", "1", "yes")
    try:
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        raise UserError(f"--{key} must be {'an integer' if tp is int else 'a number'}, got {raw!r}") from None
    if get_origin(tp) is Literal:
        choices = get_args(tp)
        for c in choices:
            if str(c) == raw:
                return c
        raise UserError(f"--{key} must be {_type_name(tp)}, got {raw!r}")
    return raw


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = node[p] = {}
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML mapping. `extends: OTHER.yaml` (a path relative to this file) takes the other file's values first
    and this file's over them, section by section: a preset that differs from another in two keys says two."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} is not): config files are UTF-8 YAML") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must hold a mapping of keys to values")
    if "extends" in data:
        parent = path.parent / str(data.pop("extends"))
        if parent.resolve() in _seen:
            raise UserError(f"{path}: 'extends' goes round in a circle through {parent}")
        data = _merge(read_yaml(parent, (*_seen, path.resolve())), data)
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Defaults < YAML file < dotted overrides (already-typed values, e.g. from `parse_flag`)."""
    tree: dict = read_yaml(path) if path else {}
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    return from_dict(cls, tree)
