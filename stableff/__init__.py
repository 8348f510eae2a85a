"""stableff: graph-neural-network force fields that stay stable in molecular dynamics."""

__version__ = "0.1.0"


def __getattr__(name):
    # imported lazily so that `import stableff` stays light (the calculator pulls in torch, e3nn, ASE)
    if name == "StableFFCalculator":
        from stableff.md.calculator import StableFFCalculator

        return StableFFCalculator
    raise AttributeError(f"module 'stableff' has no attribute {name!r}")


__all__ = ["StableFFCalculator", "__version__"]
