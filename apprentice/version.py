"""The package version, on the bottom layer so that any module can stamp what it writes with it.

(Reading it from the top package, ``apprentice.__version__``, would import the public API and with
it the whole library: an import arrow pointing up.)
"""

__version__ = "0.1.0"
