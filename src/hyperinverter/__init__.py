"""hyperinverter: HyperInverter (CVPR 2022) and its peers for StyleGAN2 inversion and editing."""

__version__ = "0.1.0"

# The main entry points, importable from the package itself; loaded on first use, so that `import hyperinverter`
# (the CLI's start-up, `--version`) does not import torch.
_LAZY = {"InversionPipeline": "hyperinverter.pipeline", "InversionResult": "hyperinverter.methods"}
__all__ = ["InversionPipeline", "InversionResult", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hyperinverter' has no attribute {name!r}")
