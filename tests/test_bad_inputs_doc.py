"""The catalogue of bad inputs (tests/bad_input_cases.py) and the docs that list it: docs/bad-inputs.md
holds every case with its message, and the README and docs/reliability.md count the cases. Running
the cases through the command line: tests/test_bad_inputs.py."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bad_input_cases import CASES, DOC, ROOT


def test_the_catalogue_is_large_and_distinct():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES) and len({(c.argv, c.env) for c in CASES}) == len(CASES)
    assert sum(c.sub for c in CASES) >= 8


def test_the_doc_lists_every_case_with_its_message():
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)` \|.*$", DOC.read_text(), re.MULTILINE)}
    for case in CASES:
        assert case.id in rows, f"{case.id} missing from {DOC}"
        row = rows[case.id].replace("\\|", "|")
        for word in case.words:
            assert word in row, f"{case.id}: {word!r} not in the doc's row"
    assert set(rows) == {c.id for c in CASES}


def _cache_messages() -> list[str]:
    """The teacher-cache messages no command line of the catalogue reaches, made by the code itself."""
    from types import SimpleNamespace

    from apprentice.data import cache_build
    from apprentice.data import teacher_cache as tc
    from apprentice.errors import ApprenticeError

    source = tc.CacheSource("exact", "0" * 64, "synthetic", "f" * 64, 0, 128, 10, (0.5,), (0.25,), 2, False, 16,
                            "float16", 25, 10, "")
    mapped = SimpleNamespace(layout=SimpleNamespace(metadata={"format": tc.FORMAT, "version": tc.VERSION,
                                                              "source": source.to_json()}))
    calls = [lambda: tc.check_source(Path("F"), mapped, dataclasses.replace(source, holdout=16)),
             lambda: tc.check_source(Path("F"), mapped, dataclasses.replace(source, mode="sampled"))]
    for logit, stored in ((float("nan"), float("nan")), (1e6, float("inf"))):
        calls.append(lambda logit=logit, stored=stored: cache_build.check_logits(
            torch.tensor([[logit]]), np.array([[stored]], np.float16), "float16", lambda row: "image 12 view 3"))
    messages = []
    for call in calls:
        with pytest.raises(ApprenticeError) as e:
            call()
        messages.append(str(e.value))
    return messages


def test_the_doc_states_the_teacher_cache_messages_and_fields():
    """The doc's prose on teacher caches: the messages as the code words them, every recorded field by its name."""
    from apprentice.data import teacher_cache as tc

    text = " ".join(DOC.read_text().split())
    for message in _cache_messages():
        assert message in text, message
    for f in dataclasses.fields(tc.CacheSource):
        assert f"`{tc._FIELD_NAMES.get(f.name, f.name)}`" in text, f.name


def test_the_readme_and_reliability_doc_count_the_cases():
    for doc in (ROOT / "README.md", ROOT / "docs" / "reliability.md"):
        assert re.search(rf"lists the {len(CASES)} cases", " ".join(doc.read_text().split())), doc
