"""A griffe extension for the API reference (mkdocs.yml loads it): read ``Example:`` as examples.

Our docstrings title their doctests ``Example:``, as the Google style guide does; griffe's Google
parser knows only ``Examples:`` and would render the section as an admonition, its ``>>>`` lines as
Markdown. The docstring text is left as written in the code; only the parsed copy is renamed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
