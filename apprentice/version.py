"""The package version, in the one place it is written (pyproject.toml reads it from here).

It sits on the bottom layer so that any module can stamp what it writes with it; reading it from the
top package (``apprentice.__version__``) would import the whole library: an import arrow pointing up.
"""

__version__ = "0.1.0"
