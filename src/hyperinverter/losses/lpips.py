"""LPIPS (Zhang et al. 2018, v0.1): learned perceptual distance on ImageNet AlexNet / VGG16 features.

The math follows the official ``lpips`` package: shift/scale the [-1,1] input, take five ReLU taps of the
backbone, unit-normalise each tap over channels, square the difference, weight channels with a 1×1
"lin" head, average over space and sum over taps.

Weights come from two files that are *not* bundled here:

* the backbone: torchvision's ImageNet state dict (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``),
  looked up in ``$TORCH_HOME/hub/checkpoints`` like torchvision does (without torchvision);
* the heads: ``weights/v0.1/{alex,vgg}.pth`` of the ``lpips`` package (54 KB wheel, installs with
  ``--no-deps``), or any file with the same keys, or the pSp-family renamed layout ``{i}.1.weight``.

Offline machines usually lack the backbone, so :class:`LPIPS` is also usable with random backbone weights
for tests; published LPIPS numbers need the real files. See docs/losses.md for the offline alternative.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..io.checkpoints import load_state_dict_strict

logger = logging.getLogger(__name__)

# torchvision file names, newest first; the URLs are only quoted in error messages (no download here).
BACKBONE_FILES: dict[str, tuple[str, ...]] = {
    "alex": ("alexnet-owt-7be5be79.pth", "alexnet-owt-4df8aa71.pth"),
    "vgg": ("vgg16-397923af.pth",),
}
BACKBONE_URL = "https://download.pytorch.org/models/{filename}"
HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth"

# ScalingLayer of lpips v0.1: (x - shift) / scale maps [-1,1] to roughly ImageNet-normalised values.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class _TapBackbone(nn.Module):
    """A torchvision-layout ``features`` Sequential that returns the outputs at ``taps`` (indices into it)."""

    taps: tuple[int, ...]
    features: nn.Sequential

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of each tap, i.e. of the last conv before that ReLU."""
        out_channels, per_index = 3, []
        for layer in self.features:
            out_channels = layer.out_channels if isinstance(layer, nn.Conv2d) else out_channels
            per_index.append(out_channels)
        return tuple(per_index[t] for t in self.taps)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x: [B,3,H,W]`` (ImageNet-normalised) -> one ``[B,C_i,H_i,W_i]`` per tap."""
        feats = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        return feats

    def load_torchvision_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Load a torchvision classifier state dict strictly; only its ``classifier.*`` keys are ignored."""
        kept = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
        load_state_dict_strict(self, kept, source=source)


class AlexNetFeatures(_TapBackbone):
    """torchvision ``AlexNet.features`` (keys ``features.{0,3,6,8,10}``); taps after ReLU 1, 4, 7, 9, 11."""

    def __init__(self) -> None:
        super().__init__()
        # Non-inplace ReLU: a tap must not be overwritten by a later in-place op (autograd and correctness).
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.taps = (1, 4, 7, 9, 11)


class VGG16Features(_TapBackbone):
    """torchvision ``VGG16.features`` (no batch norm); taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU()]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.taps = (3, 8, 15, 22, 29)


BACKBONES: dict[str, type[_TapBackbone]] = {"alex": AlexNetFeatures, "vgg": VGG16Features}


class _LinHead(nn.Module):
    """``lin{i}`` of lpips: ``model = Sequential(Dropout, Conv1x1(C->1, no bias))``; Dropout is inert in eval."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        # Ones = the unweighted "baseline" variant of the paper, a sane default before real heads are loaded.
        nn.init.ones_(self.model[1].weight)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """``d: [B,C,H,W]`` -> ``[B,1,H,W]``."""
        return self.model(d)


class LinHeads(nn.Module):
    """The lin heads as ``lin0 .. lin{n-1}``: exactly the key layout of lpips' ``weights/v0.1/*.pth``."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.num_heads = len(channels)
        for i, c in enumerate(channels):
            self.add_module(f"lin{i}", _LinHead(c))

    def __getitem__(self, i: int) -> _LinHead:
        return getattr(self, f"lin{i}")

    def __len__(self) -> int:
        return self.num_heads


def unit_normalise(f: torch.Tensor) -> torch.Tensor:
    """Features ``[B,C,...]`` divided by their norm over channels (LPIPS's normalisation)."""
    # vector_norm has a zero (not NaN) gradient at 0, where sqrt(sum f^2) would give NaN for all-zero pixels.
    return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + 1e-10)


class LPIPS(nn.Module):
    """``(x, y) -> [B]`` LPIPS distances; ``x, y: [B,C,H,W]`` in [-1,1] with C = 3 or 1 (repeated to RGB).

    Built without weights (random backbone, all-ones heads); use :meth:`from_files` for the real ones.
    The network is frozen (``requires_grad=False``, always in eval mode) but differentiable w.r.t. the inputs.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in BACKBONES:
            raise ValueError(f"net must be one of {sorted(BACKBONES)}, got {net!r}")
        self.net_name = net
        self.net = BACKBONES[net]()
        self.heads = LinHeads(self.net.channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # A loss network never trains; staying in eval keeps it deterministic inside a training model.
        return super().train(False)

    # -- loading ---------------------------------------------------------------------------------------------

    def load_heads_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Load lin heads from the lpips layout ``lin{i}.model.1.weight`` or the pSp layout ``{i}.1.weight``."""
        renamed = {}
        for key, value in state_dict.items():
            head, _, rest = key.partition(".")
            # pSp's criteria/lpips strips "lin" and "model.": "{i}.1.weight" -> "lin{i}.model.1.weight".
            renamed[f"lin{head}.model.{rest}" if head.isdigit() else key] = value
        load_state_dict_strict(self.heads, renamed, source=source)

    @classmethod
    def from_files(
        cls,
        net: str = "alex",
        backbone_path: str | os.PathLike | None = None,
        heads_path: str | os.PathLike | None = None,
    ) -> LPIPS:
        """The real LPIPS: torchvision ImageNet backbone + lpips v0.1 heads, loaded strictly.

        ``backbone_path`` defaults to the torchvision file in ``$TORCH_HOME/hub/checkpoints`` and
        ``heads_path`` to ``weights/v0.1/{net}.pth`` inside the installed ``lpips`` package.
        Raises FileNotFoundError naming the missing file, where it was looked for and what to download.
        """
        bb_path = Path(backbone_path) if backbone_path is not None else find_backbone_file(net)
        if not bb_path.is_file():
            url = BACKBONE_URL.format(filename=BACKBONE_FILES[net][0])
            raise FileNotFoundError(f"LPIPS {net} backbone file {bb_path} is missing (given as backbone_path); "
                                    f"download {url} by hand and pass its path")
        hd_path = Path(heads_path) if heads_path is not None else find_heads_file(net)
        if not hd_path.is_file():
            raise FileNotFoundError(f"LPIPS {net} heads file {hd_path} is missing (given as heads_path); "
                                    f"download {HEADS_URL.format(net=net)} by hand and pass its path")
        from ..convert.backbones import read_state_dict

        with torch.random.fork_rng(devices=[]):  # (its random initialisation, all replaced, drew from the caller's RNG)
            model = cls(net)
        model.net.load_torchvision_state_dict(read_state_dict(bb_path), source=str(bb_path))
        model.load_heads_state_dict(read_state_dict(hd_path), source=str(hd_path))
        logger.info("LPIPS %s: backbone %s, heads %s", net, bb_path, hd_path)
        return model

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x, y: [B,C,H,W]`` in [-1,1] -> ``[B]`` distances (0 for identical images)."""
        assert x.shape == y.shape, f"{tuple(x.shape)} != {tuple(y.shape)}"
        both = self.features(torch.cat([x, y]))  # one backbone pass over both images
        n = x.shape[0]
        return self.compare([f[:n] for f in both], [f[n:] for f in both])

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x: [B,C,H,W]`` in [-1,1] -> each tap's backbone features, unit-normalised along channels."""
        assert x.ndim == 4 and x.shape[1] in (1, 3), f"expected [B,1|3,H,W], got {tuple(x.shape)}"
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return [unit_normalise(f) for f in self.net((x - self.shift) / self.scale)]

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """``[B]`` distances between two images' :meth:`features`."""
        total = fx[0].new_zeros(fx[0].shape[0])
        for i, (a, b) in enumerate(zip(fx, fy)):
            total = total + self.heads[i]((a - b).square()).mean(dim=(1, 2, 3))
        return total


# ----------------------------------------------------------------------------------------------------------
# file lookup


def torch_hub_checkpoints_dir() -> Path:
    """Where torchvision caches weights: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_backbone_file(net: str) -> Path:
    """The torchvision ImageNet weights for ``net`` in the torch hub cache, or FileNotFoundError."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"net must be one of {sorted(BACKBONE_FILES)}, got {net!r}")
    folder = torch_hub_checkpoints_dir()
    for name in BACKBONE_FILES[net]:
        if (folder / name).is_file():
            return folder / name
    name = BACKBONE_FILES[net][0]
    raise FileNotFoundError(
        f"LPIPS {net} backbone file {name} is missing: looked for {', '.join(BACKBONE_FILES[net])} in {folder}. "
        f"Download {BACKBONE_URL.format(filename=name)} by hand and put it at {folder / name} "
        "(or set TORCH_HOME to the folder above hub/); in the API, backbone_path= also takes its path."
    )


def find_heads_file(net: str) -> Path:
    """``weights/v0.1/{net}.pth`` of the installed ``lpips`` package, or FileNotFoundError."""
    how = (f"Install the heads with `pip install --no-deps lpips==0.1.4`, or download "
           f"{HEADS_URL.format(net=net)} by hand and pass it as heads_path= (API).")
    # find_spec does not import lpips (whose __init__ needs torchvision); it only locates the folder.
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"LPIPS {net} heads file {net}.pth is missing: the `lpips` package is not "
                                f"installed. {how}")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS {net} heads file {net}.pth is missing: looked for {path}. {how}")
    return path



