"""The reconstruction loss every inversion trainer uses: weighted L2, LPIPS, identity and discriminator-feature
terms. Weights are explicit arguments; a term whose weight is 0 is not built (its network is never loaded)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import pooled_to_width, resized_to_width
from ..models.stylegan2 import Discriminator
from ..precision import full_precision
from .identity import CropBox


class ReconstructionLoss(nn.Module):
    """``(output, target)`` ``[B,C,H,R]`` in [-1,1] -> (weighted total, the unweighted parts to log). Images are
    square (``H = R``) but for a domain's content rows (cars); the discriminator features need square ones.

    ``loss_resolution``: compare images average-pooled to this width (the official code pools to 256 before L2,
    LPIPS and identity); the discriminator features always see full resolution. ``antialias_target``: the target
    is reduced with antialiased bilinear instead (the pSp family's targets come from its data transforms, PIL's
    ``Resize(256)``; its outputs are pooled). ``id_samples``: the identity term on the first N samples only (it
    is costly on CPUs). ``id_crop``: the face box as fractions of the image.
    """

    def __init__(self, *, l2_weight: float = 1.0, lpips_weight: float = 0.0, lpips_net: str = "alex",
                 id_weight: float = 0.0, id_model: str = "sface", id_model_path: str | None = None,
                 id_crop: CropBox | None = None, id_samples: int | None = None, dfeat_weight: float = 0.0,
                 discriminator: Discriminator | None = None, loss_resolution: int | None = None,
                 antialias_target: bool = False, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.weights = {"l2": l2_weight, "lpips": lpips_weight, "id": id_weight, "dfeat": dfeat_weight}
        self.id_samples, self.loss_resolution = id_samples, loss_resolution
        self.antialias_target = antialias_target
        self.lpips = self.identity = self.dfeat = None
        if lpips_weight > 0:
            from .lpips import LPIPS

            self.lpips = LPIPS.from_files(lpips_net).to(device)
        if id_weight > 0:
            from .identity import IdentityLoss, load_identity_embedder

            self.identity = IdentityLoss(load_identity_embedder(id_model, device, path=id_model_path),
                                         crop=id_crop).to(device)
        if dfeat_weight > 0:
            if discriminator is None:
                raise ValueError("dfeat_weight > 0 needs a generator file that holds its discriminator")
            from .discriminator_features import DiscriminatorFeatureLoss

            self.dfeat = DiscriminatorFeatureLoss(discriminator).to(device)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # Losses in fp32 whatever the autocast: small differences of nearly equal images lose bits in bf16. Casting
        # the inputs is not enough: under autocast the loss networks' convolutions ran in bf16 (LPIPS 20 % off).
        with full_precision(output.device):
            return self._forward(output.float(), target.float())

    def at_loss_resolution(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(output, target)`` as the image terms compare them: reduced to ``loss_resolution`` where it is set. A
        trainer's own image terms (E2Style's multi-layer losses) take them from here too."""
        if self.loss_resolution is None:
            return output, target
        reduce = resized_to_width if self.antialias_target else pooled_to_width
        return pooled_to_width(output, self.loss_resolution), reduce(target, self.loss_resolution)

    def _forward(self, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        full_output, full_target = output, target  # the discriminator features need its own resolution
        output, target = self.at_loss_resolution(output, target)
        parts: dict[str, torch.Tensor] = {"l2": F.mse_loss(output, target)}
        if self.lpips is not None:
            parts["lpips"] = self.lpips(output, target).mean()
        if self.identity is not None:
            n = self.id_samples or output.shape[0]
            parts["id"] = self.identity(output[:n], target[:n]).mean()
        if self.dfeat is not None:
            parts["dfeat"] = self.dfeat(full_output, full_target).mean()
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {f"loss/{k}": float(v.detach()) for k, v in parts.items()}
