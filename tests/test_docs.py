"""The documentation site: it builds with warnings as errors, its generated references are complete, and
what the docs copy (the README's code, the committed result tables, the bad-input count, the module tree,
file paths) still equals its source."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from bad_input_cases import CASES
from test_readme import _tables

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
PAGES = {p.relative_to(DOCS).as_posix(): p.read_text() for p in sorted(DOCS.rglob("*.md"))}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as CI builds it: ``mkdocs build --strict`` (a broken link or anchor, a page missing from
    the nav, a docstring that does not render: any warning fails)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", DISABLE_MKDOCS_2_WARNING="true")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                            "-d", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
    assert "WARNING" not in build.stderr, build.stderr[-5000:]
    return out


def _config_keys() -> list[str]:
    """Every dotted key of the schema's dataclasses, nested sections included (read here, not by the generator)."""
    from apprentice.config.schema import Config

    def walk(cls: type, prefix: str) -> list[str]:
        hints, out = typing.get_type_hints(cls), []
        for f in dataclasses.fields(cls):
            inner = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
            out.append(f"{prefix}{f.name}")
            if dataclasses.is_dataclass(inner):
                out += walk(inner, f"{prefix}{f.name}.")
        return out

    return [k for k in walk(Config, "") if "." in k]


def test_the_recipe_reference_lists_every_config_key(site):
    html = (site / "reference" / "recipe" / "index.html").read_text()
    keys = _config_keys()
    assert len(keys) > 60 and {"model.name", "distill.teacher_model.name", "train.bn_reestimate"} <= set(keys)
    missing = [k for k in keys if f"<code>{k}</code>" not in html]
    assert not missing, f"keys missing from the recipe reference: {missing}"
    assert "<code>sgd</code>" in html and "<code>random-resized-crop</code>" in html  # choices, from the checks


def test_the_cli_reference_lists_every_subcommand(site):
    import argparse

    from apprentice.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    html = (site / "reference" / "cli" / "index.html").read_text()
    assert {"train", "eval", "export", "predict"} <= set(action.choices)
    for name, sub in action.choices.items():
        assert f"<code>apprentice {name}</code>" in html, name
        for option in (o for a in sub._actions for o in a.option_strings if o.startswith("--")):
            assert option in html, (name, option)


def test_the_api_reference_renders_every_public_name(site):
    import apprentice

    index = (site / "reference" / "api" / "index.html").read_text()
    for name in apprentice._PUBLIC:
        assert f"ap.{name}</code>" in index, name
    quant = (site / "reference" / "api" / "quant" / "index.html").read_text()
    assert 'id="apprentice.quant.prepare.prepare"' in quant
    assert '<span class="gp">&gt;&gt;&gt; </span>' in quant  # an `Example:` section renders its doctest as code


def test_the_result_tables_are_published(site):
    for md in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert (site / "results" / md.stem / "index.html").is_file(), md.name


@pytest.mark.parametrize("name, page", [("api", "python-api.md"), ("own-model", "own-model.md"), ("images", "own-images.md")])
def test_the_readme_code_the_docs_copy_equals_the_readme(name, page):
    """tests/test_readme.py runs the README's blocks; the docs' copies must say the same."""
    def block(text: str, marker: str) -> str:
        m = re.search(re.escape(marker) + r"[^\n]*\s*```\w+\n(.*?)```", text, re.DOTALL)
        assert m, marker
        return m.group(1)

    assert block(PAGES[page], f"<!-- README-COPY: {name} ") == block(README, f"<!-- README-TEST: {name} -->")


def test_docs_tables_copied_from_results_match_them():
    # A docs table whose header and separator are those of a table in benchmarks/results/*.md is a copy
    # of it: rerunning a benchmark without updating the docs must fail here (the README's: test_readme.py).
    results: dict[tuple[str, ...], list[list[str]]] = {}
    for md in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        for table in _tables(md.read_text()):
            results.setdefault(tuple(table[:2]), []).append(table)
    copied = 0
    for page, text in PAGES.items():
        for table in _tables(text):
            if tuple(table[:2]) in results:
                assert table in results[tuple(table[:2])], f"{page}'s copy of a results table is stale: {table[0]}"
                copied += 1
    assert copied >= 7  # converged study (main, gap, paper, convergence, frontier), step costs (steps, before/after)


def test_docs_count_the_bad_input_cases():
    counts = {page: int(n) for page, text in PAGES.items()
              for n in re.findall(r"lists the (\d+) cases", " ".join(text.split()))}
    assert {"reliability.md", "command-line.md"} <= set(counts)
    assert all(n == len(CASES) for n in counts.values()), counts


def test_the_layout_page_names_every_module():
    tree = PAGES["layout.md"]
    tree = tree[tree.index("apprentice/\n"):tree.index("\nexamples/")]
    package = ROOT / "apprentice"
    modules = {p.name for p in package.rglob("*.py") if p.name != "__init__.py"}
    named = set(re.findall(r"\b(\w+\.py)\b", tree)) - {"__init__.py"}
    assert modules - named == set(), f"modules missing from docs/layout.md: {sorted(modules - named)}"
    assert named - modules == set(), f"docs/layout.md names modules that do not exist: {sorted(named - modules)}"


def test_paths_the_docs_name_exist():
    """Every `apprentice/...`, `tests/...`, `benchmarks/...` path (or pytest id) the README and the docs
    name in code spans is there: a module or test that moves must take its mentions along."""
    stale = []
    for page, text in [("README.md", README), *PAGES.items()]:
        for path in re.findall(r"`((?:apprentice|tests|benchmarks|configs|examples|docs)/[^`\s]*)`", text):
            if any(c in path for c in "{*<"):
                continue  # a pattern, not a path
            file, _, test = path.partition("::")
            if not (ROOT / file.rstrip("/")).exists() or (test and f"def {test}(" not in (ROOT / file).read_text()):
                stale.append(f"{page}: {path}")
    assert not stale, stale
