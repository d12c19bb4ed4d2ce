"""The configuration tree read and written: YAML recipes, dotted overrides, plain dicts, help text.

The tree itself is `apprentice.config.schema` (frozen dataclasses that hold values only, each field
with its help text) and its checks are `apprentice.config.checks` (`validate`); users import all of
it from here, the library from where each name is defined. Loading fills the tree generically from
the type hints. Precedence is defaults < YAML file < overrides. This module and the two it builds
on need only PyYAML: the owners' choice tables are imported when a config is validated.

Example:
    >>> cfg = load_config(None, ["optim.lr=0.05", "quant.exclude=[conv1,fc]"])
    >>> cfg.optim.lr, cfg.quant.exclude
    (0.05, ('conv1', 'fc'))
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from apprentice.config.checks import validate
from apprentice.config.schema import (
    Config,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    QuantConfig,
    TrainConfig,
)
from apprentice.config.typed_yaml import (
    apply_override,
    build,
    field_types,
    parse_override,
    show,
    split_optional,
    to_plain,
    type_name,
    yaml_load,
)
from apprentice.errors import ApprenticeError

__all__ = [
    "Config", "DataConfig", "DistillConfig", "ModelConfig", "OptimConfig", "QuantConfig",
    "TrainConfig", "config_from_dict", "config_to_dict", "diff_configs", "dump_yaml", "help_text",
    "load_config", "parse_override", "validate",
]


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML recipe, apply dotted overrides and validate.

    Args:
        path: YAML file of values (``yaml.safe_load`` semantics, no tags); None = defaults only.
        overrides: ``section.key=value`` strings applied after the file, values parsed as YAML.

    Returns:
        The validated `Config`.

    Raises:
        ApprenticeError: unreadable file, bad YAML, unknown key, wrong type, bad value or an
            impossible combination; the message names the file/line or the dotted key.
    """
    tree: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            override = "=" in str(path) and not Path(path).exists()  # `apprentice train optim.lr=0.1`: no recipe
            raise ApprenticeError(f"cannot read config file {str(path)!r}: {e.strerror or e}" + (
                "; the first argument is the YAML recipe, key=value overrides come after it" if override else "")) from None
        except UnicodeDecodeError:
            raise ApprenticeError(f"config file {str(path)!r} is not UTF-8 text (a checkpoint or other binary "
                                  f"file?); give a YAML recipe") from None
        tree = yaml_load(text, str(path))
        if tree is not None and not isinstance(tree, dict):
            raise ApprenticeError(f"{path}: expected a mapping of sections at the top, got {show(tree)}")
        if not tree or all(v is None or v == {} for v in tree.values()):
            # An unsaved or wrong file would otherwise train every default (resnet20, 10 epochs) silently.
            raise ApprenticeError(f"{path}: the recipe sets nothing (the file is empty, only comments or empty "
                                  f"sections); write the sections you mean, e.g. 'model: {{name: resnet20}}'")
        try:
            build(Config, tree, "")  # type errors here name the file, not an override
        except ApprenticeError as e:
            raise ApprenticeError(f"{path}: {e}") from None
    for text in overrides:
        apply_override(tree, text, Config)
    cfg = build(Config, tree, "")
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain JSON/YAML-safe containers (tuples become lists)."""
    return to_plain(cfg)


def config_from_dict(d: Mapping[str, Any], *, check: bool = True) -> Config:
    """Rebuild a `Config` from `config_to_dict` output (or any partial mapping; defaults fill in).

    Args:
        d: nested mapping of sections.
        check: run `validate` (turn off to read an old run whose choices no longer exist).
    """
    cfg = build(Config, d, "")
    if check:
        validate(cfg)
    return cfg


def diff_configs(a: Config, b: Config, *, values: bool = True) -> list[str]:
    """Dotted keys whose values differ between two configs, in schema order.

    Args:
        a: old config.
        b: new config.
        values: entries read ``"optim.lr: 0.1 -> 0.05"``; False gives bare keys (``"optim.lr"``).
    """
    out: list[str] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in x:
                walk(x[k], y[k], f"{prefix}.{k}" if prefix else k)
        elif x != y:
            out.append(f"{prefix}: {show(x)} -> {show(y)}" if values else prefix)

    walk(config_to_dict(a), config_to_dict(b), "")
    return out


def help_text() -> str:
    """Every config key with its type, default and help (for ``apprentice train --help``).

    Example:
        >>> print(help_text().splitlines()[1])
          model.name: string = 'resnet20'
    """
    lines = []

    def walk(cls: type, default: Any, prefix: str) -> None:
        hints = field_types(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            inner, _ = split_optional(hints[f.name])
            value = getattr(default, f.name)
            if dataclasses.is_dataclass(inner) and not prefix:
                lines.append(f"{key}: {f.metadata['help']}")
            else:
                kind = type_name(hints[f.name]).replace("a list of", "list of").replace("true or false", "bool")
                kind = re.sub(r"^(a|an) ", "", kind)
                lines.append(f"  {key}: {kind} = {show(value)}")
                lines.append(f"      {f.metadata['help']}")
            if dataclasses.is_dataclass(inner):
                walk(inner, value if value is not None else inner(), key)

    walk(Config, Config(), "")
    return "\n".join(lines)



def dump_yaml(cfg: Config) -> str:
    """The config as YAML text that `load_config` reads back to an equal config."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
