"""stableff: graph-neural-network force fields that stay stable in molecular dynamics."""

import logging as _logging
import sys as _sys

__version__ = "0.1.0"

# stableff's own notes (e.g. a model compiled, and in how long) go to stderr, one plain line each;
# a program that configures logging itself can replace this handler
class _StderrHandler(_logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (captured output, a redirected stream)."""

    @property
    def stream(self):
        return _sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


_log = _logging.getLogger("stableff")
if not _log.handlers:
    _handler = _StderrHandler()
    _handler.setFormatter(_logging.Formatter("%(message)s"))
    _log.addHandler(_handler)
    _log.setLevel(_logging.INFO)
    _log.propagate = False


def __getattr__(name):
    # imported lazily so that `import stableff` stays light (the calculator pulls in torch, e3nn, ASE)
    if name == "StableFFCalculator":
        from stableff.md.calculator import StableFFCalculator

        return StableFFCalculator
    raise AttributeError(f"module 'stableff' has no attribute {name!r}")


__all__ = ["StableFFCalculator", "__version__"]
