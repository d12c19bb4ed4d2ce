"""Typed dataclass trees from value-only YAML and dotted overrides (the machinery under `config`).

YAML is read with a SafeLoader subclass (no object tags; YAML 1.2-style booleans and floats;
duplicate keys refused) and dataclasses are filled generically from their type hints, so a wrong
key or type is reported with its dotted name instead of failing later.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from apprentice.errors import ApprenticeError

# ---------------------------------------------------------------------------------------------
# YAML: safe loading with YAML 1.2-style scalars


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with stricter scalars and duplicate-key detection.

    PyYAML follows YAML 1.1: `yes`/`no`/`on`/`off` become booleans and `1e-4` (no dot) a string.
    Both surprise people writing recipes, so booleans are only true/false and exponent floats parse.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _FLOAT)]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF))|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_load(text: str, source: str, *, lines: bool = True) -> Any:
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no object tags
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None and lines else source
        problem = getattr(e, "problem", None) or str(e)
        if isinstance(e, yaml.constructor.ConstructorError) and "constructor for the tag" in problem:
            m = re.search(r"tag '([^']*)'", problem)
            tag = m.group(1).replace("tag:yaml.org,2002:", "!!") if m else "(unknown)"
            raise ApprenticeError(
                f"{where}: YAML tag {tag} is not allowed; config files hold plain values only"
            ) from None
        raise ApprenticeError(f"{where}: invalid YAML: {' '.join(problem.split())}") from None


# ---------------------------------------------------------------------------------------------
# Generic typed filling from dicts


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


#: One path or several (``distill.teacher``: a run, or the runs of an ensemble): a string stays a
#: string, a list becomes a tuple of strings.
OneOrMore = str | tuple[str, ...]


def split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for `X | None`; (tp, False) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if set(args) == set(typing.get_args(OneOrMore)):
            return OneOrMore, len(args) != len(typing.get_args(tp))
        if len(args) != 1:
            raise TypeError(f"unsupported config type {tp}")
        return args[0], len(args) != len(typing.get_args(tp))
    return tp, False


#: A plain YAML value: what a mapping of ``Scalar`` values may hold (``model.args``).
Scalar = str | int | float | bool
#: Ordered mappings from strings: value type -> (what messages call it, the Python types accepted).
_PAIR_VALUES: dict[Any, tuple[str, tuple[type, ...]]] = {
    str: ("a mapping of strings to strings", (str,)),
    Scalar: ("a mapping of names to plain values", (str, int, float, bool)),
}


def _pair_value(tp: Any) -> Any:
    """``V`` for ``tuple[tuple[str, V], ...]`` (an ordered mapping, YAML keeps the order), else None."""
    args = typing.get_args(tp) if typing.get_origin(tp) is tuple else ()
    if len(args) == 2 and args[1] is Ellipsis and typing.get_origin(args[0]) is tuple:
        key, value = typing.get_args(args[0])
        if key is str and value in _PAIR_VALUES:
            return value
    return None


def _is_pairs(tp: Any) -> bool:
    return _pair_value(tp) is not None


def type_name(tp: Any) -> str:
    inner, optional = split_optional(tp)
    if dataclasses.is_dataclass(inner):
        name = "a mapping"
    elif inner == OneOrMore:
        name = "a string or a list of strings"
    elif _is_pairs(inner):
        name = _PAIR_VALUES[_pair_value(inner)][0]
    elif typing.get_origin(inner) is tuple:
        elem = typing.get_args(inner)[0]
        name = "a list of " + {str: "strings", int: "integers", float: "floats", bool: "booleans"}[elem]
    else:
        name = {str: "a string", int: "an integer", float: "a float", bool: "true or false"}[inner]
    return f"{name} or null" if optional else name


def show(value: Any) -> str:
    """A value as the user wrote it in YAML terms (null, true, 'text', [1, 2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def convert(tp: Any, value: Any, key: str) -> Any:
    inner, optional = split_optional(tp)
    if value is None and dataclasses.is_dataclass(inner) and not optional:
        value = {}  # an empty section (`optim:` with every key commented out) means defaults
    if value is None:
        if optional:
            return None
        raise ApprenticeError(f"{key}: expected {type_name(tp)}, got null")
    if dataclasses.is_dataclass(inner):
        return build(inner, value, key)
    if inner == OneOrMore:
        if isinstance(value, str):
            return value
        if not isinstance(value, (list, tuple)) or not value:
            raise ApprenticeError(f"{key}: expected {type_name(tp)}, got {show(value)}")
        return convert(tuple[str, ...], value, key)
    if _is_pairs(inner):
        return _pairs(value, key, tp)
    if typing.get_origin(inner) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ApprenticeError(f"{key}: expected {type_name(tp)}, got {show(value)}")
        elem = typing.get_args(inner)[0]
        return tuple(convert(elem, v, f"{key}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[inner]
    if not ok:
        raise ApprenticeError(f"{key}: expected {type_name(tp)}, got {show(value)}")
    return float(value) if inner is float else value


def _pairs(value: Any, key: str, tp: Any) -> tuple[tuple[str, Any], ...]:
    """A YAML mapping (or the list of [key, value] pairs `to_plain` writes) as ordered pairs."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise ApprenticeError(f"{key}: expected {type_name(tp)}, got {show(value)}")
    accepted = _PAIR_VALUES[_pair_value(split_optional(tp)[0])][1]
    for k, v in pairs:
        if not isinstance(k, str) or not isinstance(v, accepted):
            raise ApprenticeError(f"{key}: expected {type_name(tp)}, got {show(k)}: {show(v)}")
    if not pairs:
        raise ApprenticeError(f"{key}: an empty mapping; use null for none")
    if len({k for k, _ in pairs}) != len(pairs):
        raise ApprenticeError(f"{key}: a name given twice in {show(value)}")
    return tuple((k, float(v) if isinstance(v, float) else v) for k, v in pairs)


def build(cls: type, data: Any, prefix: str) -> Any:
    """Fill dataclass `cls` from a mapping, defaults for missing keys; errors name dotted keys."""
    if isinstance(data, cls):
        return data
    where = f"{prefix}: " if prefix else ""
    if not isinstance(data, Mapping):
        raise ApprenticeError(f"{where or 'config: '}expected a mapping of keys, got {show(data)}")
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ApprenticeError(f"unknown key {dotted!r}; allowed: {', '.join(names)}")
        kwargs[key] = convert(hints[key], value, dotted)
    return cls(**kwargs)


def to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (["a", "b"], value); the value is parsed as YAML.

    Example:
        >>> parse_override("quant.exclude=[conv1, fc]")
        (['quant', 'exclude'], ['conv1', 'fc'])
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in key.split(".")):
        raise ApprenticeError(
            f"bad override {text!r}; write section.key=value, e.g. optim.lr=0.05"
        )
    return key.split("."), yaml_load(raw, f"override {text!r}", lines=False)


def apply_override(tree: dict, text: str, schema: type) -> None:
    """Set one override in the raw nested dict, checking the dotted path against the ``schema`` dataclass."""
    path, value = parse_override(text)
    cls: Any = schema
    node = tree
    for i, part in enumerate(path):
        dotted = ".".join(path[: i + 1])
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ApprenticeError(
                f"override {text!r}: unknown key {dotted!r}; allowed: {', '.join(names)}"
            )
        if i == len(path) - 1:
            try:
                convert(field_types(cls)[part], value, dotted)  # type errors name the override
            except ApprenticeError as e:
                raise ApprenticeError(f"override {text!r}: {e}") from None
            node[part] = value
            return
        inner, _ = split_optional(field_types(cls)[part])
        if not dataclasses.is_dataclass(inner):
            raise ApprenticeError(f"override {text!r}: {dotted!r} is a value, not a section")
        if not isinstance(node.get(part), dict):
            node[part] = {}  # also turns `teacher_model: null` into defaults to fill
        node, cls = node[part], inner
