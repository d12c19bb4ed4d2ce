"""Generate the docs' reference pages at build time (run by the mkdocs-gen-files plugin).

Nothing here is kept by hand; each page is read from the code that owns its facts:

- ``reference/recipe.md``: every config key, from the schema's dataclasses (`apprentice.config.schema`):
  its type, default and help text; its allowed values are what `apprentice.config.validate` says when
  the key is given a bad value (the choice tables' names, the ranges), so the page cannot drift from
  the checks.
- ``reference/cli.md``: every subcommand's ``--help``, from `apprentice.cli.build_parser()`.
- ``reference/api/*.md``: the Python API, rendered by mkdocstrings from the docstrings: the public
  names of ``apprentice/__init__.py`` (``_PUBLIC``) grouped by their module, and the subpackages.
- ``results/*.md``: the committed benchmark results (``benchmarks/results/*.md`` and their plots) and
  ``benchmarks/README.md``, copied as they are, so the study pages can link to the full tables.

Run it alone to print the recipe and CLI pages: ``.venv/bin/python docs/gen_reference.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import apprentice  # the checkout's package, not an installed one
from apprentice.config import load_config
from apprentice.config.schema import Config
from apprentice.config.typed_yaml import field_types, show, split_optional, type_name
from apprentice.errors import ApprenticeError

# The API pages: (page, title, modules rendered on it). Every module a public name comes from must be
# on one page (`api_pages` checks it), so a new public module fails the build until it is placed.
API_PAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("models", "Models", ("apprentice.models",)),
    ("quant", "Quantization", ("apprentice.quant",)),
    ("distill", "Distillation and losses", ("apprentice.distill", "apprentice.ensemble", "apprentice.losses")),
    ("export", "Export", ("apprentice.export",)),
    ("train", "Training machinery", ("apprentice.train",)),
    ("run", "Runs: fit and reading back", ("apprentice.run", "apprentice.run.loop", "apprentice.run.runs")),
    ("config", "Configuration", ("apprentice.config", "apprentice.config.schema")),
    ("data", "Data", ("apprentice.data",)),
    ("cli", "Command line", ("apprentice.cli",)),
    ("errors", "Errors", ("apprentice.errors",)),
)


# ---------------------------------------------------------------------------------------------
# The recipe reference


@dataclasses.dataclass(frozen=True)
class Key:
    key: str
    type: str
    default: str
    allowed: str
    help: str


def config_sections() -> Iterator[tuple[str, str, list[Key]]]:
    """(section, its help, its keys) for each top-level section of `Config`, nested sections flattened."""
    hints = field_types(Config)
    for f in dataclasses.fields(Config):
        inner, _ = split_optional(hints[f.name])
        yield f.name, f.metadata["help"], list(_keys(inner, inner(), f.name))


def _keys(cls: type, default: Any, prefix: str) -> Iterator[Key]:
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        key, value = f"{prefix}.{f.name}", getattr(default, f.name)
        inner, _ = split_optional(hints[f.name])
        if dataclasses.is_dataclass(inner):
            yield Key(key, type_name(hints[f.name]), show(value), "", f.metadata["help"])
            yield from _keys(inner, value if value is not None else inner(), key)
        else:
            yield Key(key, type_name(hints[f.name]), show(value), allowed_values(key, inner), f.metadata["help"])


# A value of each type that the checks refuse, so that their message says what they accept.
_PROBES: dict[Any, str] = {str: "__not_a_choice__", int: "-1", float: ".nan"}


def allowed_values(key: str, tp: Any) -> str:
    """What `validate` accepts for ``key``, in its own words: its choices or its range ("" if it says neither)."""
    if tp is bool:
        return "`true`, `false`"
    probe = _PROBES.get(tp)
    if probe is None:
        return ""
    try:
        load_config(None, [f"{key}={probe}"])
    except ApprenticeError as e:
        message = str(e)
    else:
        return ""  # any value of the type
    if m := re.search(r"choose from \[(.*?)\]", message):
        return ", ".join(f"`{name.strip(chr(39))}`" for name in m.group(1).split(", "))
    if m := re.search(r"choose from ([^;]*)", message):
        return ", ".join(f"`{name}`" for name in m.group(1).split(", "))
    if m := re.search(r"must be ([^,]*?)(?: and finite)?, got", message):
        return m.group(1)
    if m := re.search(r"is not (like .*)$", message):
        return m.group(1)
    return ""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def recipe_page() -> str:
    lines = [
        "# Recipe reference",
        "",
        "Every key of a recipe (`apprentice train RECIPE.yaml key=value ...`), generated from the config",
        "schema (`apprentice/config/schema.py`) when the docs are built: its type, its default, the values",
        "the checks accept (`apprentice/config/checks.py`, in their own words: asked with a wrong value) and",
        "its help text. `apprentice train --help` prints the same keys. A value written `null` means",
        "\"not set\": the help says what is used then. Values are YAML (`0.05`, `[conv1, fc]`, `null`);",
        "defaults < the recipe file < the `key=value` overrides.",
        "",
    ]
    for section, help_, keys in config_sections():
        lines += [f"## `{section}`", "", f"{help_[0].upper()}{help_[1:]}.", "",
                  "| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        lines += [f"| `{k.key}` | {_cell(k.type)} | `{_cell(k.default)}` | {_cell(k.allowed)} | {_cell(k.help)} |"
                  for k in keys]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command-line reference


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order ``apprentice --help`` lists them."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def cli_page() -> str:
    from apprentice.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the page wraps the same everywhere
    parser = build_parser()
    commands = subcommands(parser)
    lines = ["# Command-line reference", "",
             "Generated from the argument parser (`apprentice.cli.build_parser()`) when the docs are built:",
             "each subcommand's `--help`, as the command prints it.", "",
             "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in commands.items():
        lines += [f"## `apprentice {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The Python API reference


def _shadowed(module: str, name: str) -> bool:
    """Whether the package ``module`` has a submodule called ``name`` (which the re-exported name hides)."""
    folder = ROOT.joinpath(*module.split("."))
    return folder.is_dir() and (folder / f"{name}.py").is_file()


def api_pages() -> dict[str, str]:
    """Page name -> Markdown: an index of the public names, and one page per group of modules."""
    public: dict[str, str] = apprentice._PUBLIC
    page_of = {module: page for page, _, modules in API_PAGES for module in modules}
    unplaced = sorted(set(public.values()) - set(page_of))
    if unplaced:
        raise SystemExit(f"docs/gen_reference.py: modules with public names on no API page: {unplaced}; add them to API_PAGES")
    lines = ["# Python API", "",
             "`import apprentice as ap` gives these names (the table `_PUBLIC` in `apprentice/__init__.py`;",
             "they load on first use, so importing the package costs nothing). Each links to its module's",
             "page, generated from the docstrings by mkdocstrings.", "",
             "| name | defined in |", "|---|---|"]
    shadowed = {name: module for name, module in public.items() if _shadowed(module, name)}
    for name, module in sorted(public.items(), key=lambda kv: kv[0].lower()):
        anchor = f"{module}.{name}.{name}" if name in shadowed else f"{module}.{name}"
        lines.append(f"| [`ap.{name}`]({page_of[module]}.md#{anchor}) | `{module}` |")
    lines += ["", "Pages:", ""]
    lines += [f"- [{title}]({page}.md): " + ", ".join(f"`{m}`" for m in modules) for page, title, modules in API_PAGES]
    pages = {"index": "\n".join(lines) + "\n"}
    for page, title, modules in API_PAGES:
        body = [f"# {title}", ""]
        for module in modules:
            body += [f"::: {module}", ""]
            # A name that is also its package's submodule (`apprentice.quant.prepare`): the package
            # page shows the submodule's place, so the name gets its own block.
            body += [f"::: {module}.{name}.{name}\n" for name, m in shadowed.items() if m == module]
        pages[page] = "\n".join(body)
    return pages


# ---------------------------------------------------------------------------------------------
# mkdocs-gen-files


def write_pages() -> None:
    import mkdocs_gen_files

    pages = {"reference/recipe.md": recipe_page(), "reference/cli.md": cli_page()}
    pages.update({f"reference/api/{name}.md": text for name, text in api_pages().items()})
    for path, text in pages.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)
    results = ROOT / "benchmarks" / "results"
    for source in sorted([*results.glob("*.md"), *results.glob("*.png")]):
        with mkdocs_gen_files.open(f"results/{source.name}", "wb" if source.suffix == ".png" else "w") as f:
            f.write(source.read_bytes() if source.suffix == ".png" else source.read_text())
        if source.suffix == ".md":
            mkdocs_gen_files.set_edit_path(f"results/{source.name}", os.path.relpath(source, ROOT / "docs"))
    with mkdocs_gen_files.open("results/benchmarks.md", "w") as f:
        f.write((ROOT / "benchmarks" / "README.md").read_text())


if __name__ == "__main__":
    print(recipe_page())
    print(cli_page())
elif __name__ == "<run_path>":  # mkdocs-gen-files runs the file with runpy.run_path
    write_pages()
