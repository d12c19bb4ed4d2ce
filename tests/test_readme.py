"""The README's promises: its API example runs as written, its quickstart runs (short form), CI
runs exactly its test command, and the benchmark tables it copies equal the committed results."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _block_after(marker: str) -> str:
    m = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", README, re.DOTALL)
    assert m, f"README has no python block after {marker}"
    return m.group(1)


def test_api_example_runs_as_written(tmp_path):
    code = _block_after("<!-- README-TEST: api -->")
    assert len(code.strip().splitlines()) <= 16  # "a 15-line example" (plus imports' blank line)
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:3]] == ["0", "1", "2"]
    assert all("'loss'" in ln and "'kd'" in ln and "'ce_student'" in ln for ln in lines[:3])
    preds = eval(lines[3])  # a list of 4 class indices from the reloaded packed model
    assert len(preds) == 4 and all(0 <= p < 10 for p in preds)
    assert (tmp_path / "student.safetensors").stat().st_size < 30_000  # ternary resnet8: ~22 kB


def _readme_commands() -> list[str]:
    first_screen = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1)
    return [ln for ln in first_screen.splitlines() if ln.strip() and not ln.startswith("#")]


def test_first_screen_has_two_commands_and_ci_runs_the_test_one():
    main, tests = _readme_commands()
    assert main == "./quickstart.sh"
    assert "pytest" in tests and "constraints.txt" in tests
    ci = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith(("#", "set ", "cd "))]
    assert ci == [tests]


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist (the README's test command installs it)")
def test_quickstart_short_form(tmp_path):
    """The real quickstart script on real data, cut to a few hundred steps' worth of work."""
    env = dict(os.environ, OUT=str(tmp_path / "qs"), QS_ARGS="train.epochs=1 data.limit=1024 model.width=0.5")
    env["PATH"] = f"{ROOT / '.venv/bin'}:{env['PATH']}"
    out = subprocess.run(["bash", str(ROOT / "quickstart.sh")], check=False, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = out.stdout[out.stdout.index("run "):]
    for run in ("teacher", "baseline", "student", "student.safetensors"):
        assert f"qs/{run} " in table
    assert "2W/32A" in table and "32W/32A" in table
    packed = tmp_path / "qs" / "student.safetensors"
    assert packed.is_file() and packed.stat().st_size < 20_000
    for run in ("teacher", "baseline", "student"):
        assert (tmp_path / "qs" / run / "summary.json").is_file()


def test_own_model_commands_run_as_written(tmp_path):
    """The "Your own model" commands, as written, on synthetic images for one short epoch."""
    block = re.search(r"<!-- README-TEST: own-model -->\s*```bash\n(.*?)```", README, re.DOTALL).group(1)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    quick = ["data.name=synthetic", "data.download=false", "data.limit=256", "train.epochs=1", "train.device=cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    commands = [shlex.split(ln.split("  #")[0]) for ln in block.splitlines() if ln.strip()]
    assert [c[:2] for c in commands] == [["apprentice", "train"]] * 2 + [["apprentice", c] for c in ("export", "eval", "compare")]
    for cmd in commands:
        extra = quick if cmd[1] == "train" else []
        out = subprocess.run([sys.executable, "-m", "apprentice", *cmd[1:], *extra], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, f"{cmd}: {out.stderr}"
    assert "tinyvgg" in out.stdout and "2W/32A" in out.stdout  # the compare table
    assert (tmp_path / "tinyvgg_b.safetensors").stat().st_size < 40_000


def _tables(text: str) -> list[list[str]]:
    """Markdown tables: runs of consecutive lines that start with '|'."""
    out, cur = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cur.append(line.rstrip())
        elif cur:
            out.append(cur)
            cur = []
    return out


def test_readme_tables_copied_from_results_match_them():
    # A README table whose header and separator are those of a table in benchmarks/results/*.md is
    # a copy of it: rerunning a benchmark without updating the README must fail here.
    # Two result files of one benchmark (speed.md, speed_cache.md) share a header: the copy must
    # equal one of that header's tables. The tables the docs copy: tests/test_docs.py.
    results: dict[tuple[str, ...], list[tuple[str, list[str]]]] = {}
    for md in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        for table in _tables(md.read_text()):
            results.setdefault(tuple(table[:2]), []).append((md.name, table))
    copied = []
    for table in _tables(README):
        sources = results.get(tuple(table[:2]), [])
        if sources:
            assert table in [t for _, t in sources], f"README's copy of a {sources[0][0]} table is stale"
            copied.append(table)
    # the headline: the patient study's summary table at width 1 (issue 29), as accuracy_patient_grid_w1.md has it
    patient = _tables((ROOT / "benchmarks" / "results" / "accuracy_patient_grid_w1.md").read_text())
    assert any(table in patient and len(table) > 10 for table in copied)


def test_readme_is_a_front_door():
    """What, install, the two commands, own images and own model early, a short tour: at most 250 lines."""
    lines = README.splitlines()
    assert len(lines) <= 250
    first_bash = next(i for i, ln in enumerate(lines) if ln.startswith("```bash"))
    setup_end = next(i for i in range(first_bash + 1, len(lines)) if lines[i].startswith("```"))
    assert lines.index("<!-- README-TEST: images -->") - setup_end < 50  # the first screenful after the set-up
    for heading in ("## Install", "## Train on your own images", "## Your own model", "## Does the teacher help?",
                    "### The Python API", "### The command line and recipes", "### Export: packed files and int8 ONNX",
                    "### Predict", "## Read more"):
        assert heading in lines, heading
    links = [link for link in re.findall(r"\]\(([^)#\s]+)", README) if not link.startswith(("http:", "https:"))]
    assert sum(link.startswith("docs/") for link in links) >= 10
    for link in links:  # a relative link names a file of the repository
        assert (ROOT / link).is_file(), link


def test_your_own_images_commands_run_as_written(tmp_path):
    """The "Your own images" block, in a short form: its commands on a generated 3-class PNG folder."""
    pytest.importorskip("PIL.Image")
    from format_writers import write_image_folder

    block = re.search(re.escape("<!-- README-TEST: images -->") + r"\s*```bash\n(.*?)```", README, re.DOTALL)
    commands = [ln.split() for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    assert [c[:2] for c in commands] == [["apprentice", "train"]] * 2 + [["apprentice", "export"], ["apprentice", "predict"]]
    write_image_folder(tmp_path / "my_images", classes=("cat", "dog", "owl"), counts=(("train", 8), ("val", 4)))
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    short = ["train.epochs=1", "model.width=0.25", "data.batch_size=8", "data.eval_batch_size=16", "data.workers=0",
             "train.device=cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for command in commands:
        argv = [sys.executable, "-m", "apprentice", *command[1:], *(short if command[1] == "train" else [])]
        out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert out.returncode == 0, (command, out.stderr[-2000:])
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 12 and all(re.fullmatch(r"my_images/val/(cat|dog|owl)/\d\.png: \w+ [\d.]+ %, \w+ [\d.]+ %", ln)
                                    for ln in lines), lines
    assert (tmp_path / "mine.safetensors").is_file()
    assert "- owl" in (tmp_path / "runs" / "mine" / "student" / "config.yaml").read_text()
