"""hyperinverter: HyperInverter (CVPR 2022) and its peers for StyleGAN2 inversion and editing.

    from hyperinverter import InversionPipeline

    pipe = InversionPipeline.from_pretrained("faces-64")   # a bundled model, a bundle folder or a generator file
    result = pipe.invert(["photo.png"])                     # InversionResult: ws, image, weight_delta, ...
    edited = pipe.edit(result, "yaw", 2.0)                  # a direction the model ships, a file or a vector
    pipe.save_result(result, "photo.safetensors")

``hyperinverter models`` lists the models, ``hyperinverter methods`` the methods; ``hyperinverter --help`` the
command line. ``InversionPipeline`` and ``InversionResult`` load torch on first use.
"""

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
