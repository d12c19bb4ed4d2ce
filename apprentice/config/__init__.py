"""The configuration tree: frozen dataclasses of values (`schema`), typed YAML (`typed_yaml`), the
checks (`checks`), and reading and writing recipes (`io`).

Only the command line and the run layer (`apprentice.run`) import this package; components take
plain arguments. Importing it needs PyYAML alone, no torch; `validate` looks names up in the
choice tables of the modules that own them, and so imports them (and torch) when it runs.

Example:
    >>> from apprentice.config import load_config
    >>> load_config(None, ["optim.lr=0.05"]).optim.lr
    0.05
"""

from apprentice.config.io import (
    Config,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    QuantConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    diff_configs,
    dump_yaml,
    help_text,
    load_config,
    parse_override,
    validate,
)

__all__ = [
    "Config", "DataConfig", "DistillConfig", "ModelConfig", "OptimConfig", "QuantConfig",
    "TrainConfig", "config_from_dict", "config_to_dict", "diff_configs", "dump_yaml", "help_text",
    "load_config", "parse_override", "validate",
]
