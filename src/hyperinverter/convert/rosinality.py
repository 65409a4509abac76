"""rosinality/stylegan2-pytorch ``.pt`` <-> our (NVIDIA-named) generator state dict.

The key map is generated from the generator config, one row per tensor, each with a rule; the rules
are the verified ones (no spatial flip, filters /4, shape squeezes). Tests check the generated map
against the reference tables for 32 px and 256 px.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..errors import CheckpointError
from ..io.checkpoints import key_problems
from ..models.stylegan2.generator import GeneratorConfig
from ..ops.filters import setup_filter


@dataclass(frozen=True)
class KeyRule:
    rosinality: str | None  # None: the tensor exists only in the NVIDIA layout (derivable buffer)
    nvidia: str
    rule: str
    optional: bool = False  # rosinality files may lack it (blur kernels, noise buffers, latent_avg)


# rosinality tensor -> NVIDIA tensor, and back.
_FORWARD: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "squeeze_dim0": lambda t: t[0],
    "reshape_to_0d": lambda t: t.reshape([]),
    "squeeze_dims01": lambda t: t[0, 0],
    "flatten_1_3_1_1_to_3": lambda t: t.reshape(-1),
    "divide_by_4": lambda t: t / 4,
}
_BACKWARD: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "squeeze_dim0": lambda t: t.unsqueeze(0),
    "reshape_to_0d": lambda t: t.reshape(1),
    "squeeze_dims01": lambda t: t[None, None],
    "flatten_1_3_1_1_to_3": lambda t: t.reshape(1, -1, 1, 1),
    "divide_by_4": lambda t: t * 4,
}


ROSINALITY_LR_MLP = 0.01  # rosinality's Generator(lr_mlp=0.01): its mapping's learning-rate multiplier


def key_map(config: GeneratorConfig) -> list[KeyRule]:
    """Every generator tensor with its rosinality name and conversion rule, in rosinality order."""
    rows: list[KeyRule] = []
    for i in range(config.mapping_layers):
        for p in ("weight", "bias"):
            rows.append(KeyRule(f"style.{i + 1}.{p}", f"mapping.fc{i}.{p}", "identity"))
    rows.append(KeyRule("latent_avg", "mapping.w_avg", "identity", optional=True))
    rows.append(KeyRule("input.input", "synthesis.b4.const", "squeeze_dim0"))

    def conv_rows(rosi: str, nv: str, noise_index: int, upsampling: bool) -> None:
        rows.extend([
            KeyRule(f"{rosi}.conv.weight", f"{nv}.weight", "squeeze_dim0"),
            KeyRule(f"{rosi}.conv.modulation.weight", f"{nv}.affine.weight", "identity"),
            KeyRule(f"{rosi}.conv.modulation.bias", f"{nv}.affine.bias", "identity"),
        ])
        if config.use_noise:
            rows.append(KeyRule(f"{rosi}.noise.weight", f"{nv}.noise_strength", "reshape_to_0d"))
        rows.append(KeyRule(f"{rosi}.activate.bias", f"{nv}.bias", "identity"))
        if config.use_noise:
            rows.append(KeyRule(f"noises.noise_{noise_index}", f"{nv}.noise_const", "squeeze_dims01", optional=True))
        if upsampling:
            rows.append(KeyRule(f"{rosi}.conv.blur.kernel", f"{nv}.resample_filter", "divide_by_4", optional=True))
        else:
            rows.append(KeyRule(None, f"{nv}.resample_filter", "const_setup_filter"))

    def torgb_rows(rosi: str, nv: str) -> None:
        rows.extend([
            KeyRule(f"{rosi}.conv.weight", f"{nv}.weight", "squeeze_dim0"),
            KeyRule(f"{rosi}.conv.modulation.weight", f"{nv}.affine.weight", "identity"),
            KeyRule(f"{rosi}.conv.modulation.bias", f"{nv}.affine.bias", "identity"),
            KeyRule(f"{rosi}.bias", f"{nv}.bias", "flatten_1_3_1_1_to_3"),
        ])

    conv_rows("conv1", "synthesis.b4.conv1", 0, upsampling=False)
    torgb_rows("to_rgb1", "synthesis.b4.torgb")
    rows.append(KeyRule(None, "synthesis.b4.resample_filter", "const_setup_filter"))
    for i in range(int(math.log2(config.resolution)) - 2):
        res = 2 ** (i + 3)
        nv = f"synthesis.b{res}"
        conv_rows(f"convs.{2 * i}", f"{nv}.conv0", 2 * i + 1, upsampling=True)
        conv_rows(f"convs.{2 * i + 1}", f"{nv}.conv1", 2 * i + 2, upsampling=False)
        torgb_rows(f"to_rgbs.{i}", f"{nv}.torgb")
        rows.append(KeyRule(f"to_rgbs.{i}.upsample.kernel", f"{nv}.resample_filter", "divide_by_4", optional=True))
    return rows


def infer_config(g_ema: Mapping[str, torch.Tensor]) -> GeneratorConfig:
    """Read resolution, widths and mapping depth off a rosinality ``g_ema`` state dict."""
    if not isinstance(g_ema, Mapping) or not all(isinstance(v, torch.Tensor) for v in g_ema.values()):
        raise CheckpointError("its 'g_ema' is not a state dict of tensors")
    expected_ndim = {"style.1.weight": 2, "input.input": 4, "to_rgb1.conv.weight": 5}
    for key, ndim in expected_ndim.items():
        if key not in g_ema:
            raise CheckpointError(f"not a rosinality StyleGAN2 generator: missing {key!r}")
        if g_ema[key].ndim != ndim:
            raise CheckpointError(f"not a rosinality StyleGAN2 generator: {key!r} has shape "
                                  f"{list(g_ema[key].shape)}, expected {ndim} dimensions")
    w_dim, z_dim = g_ema["style.1.weight"].shape
    const = g_ema["input.input"]
    img_channels = g_ema["to_rgb1.conv.weight"].shape[1]
    mapping_layers = sum(1 for k in g_ema if k.startswith("style.") and k.endswith(".weight"))
    num_blocks = sum(1 for k in g_ema if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    resolution = 2 ** (num_blocks + 2)
    channels = {4: const.shape[1]}
    for i in range(num_blocks):
        weight = g_ema.get(f"convs.{2 * i}.conv.weight")
        if weight is None or weight.ndim != 5:
            raise CheckpointError(f"not a rosinality StyleGAN2 generator: 'convs.{2 * i}.conv.weight' is missing or "
                                  "not [1, out, in, k, k]")
        channels[2 ** (i + 3)] = weight.shape[1]
    channel_max = max(channels.values())
    capped = [r for r, c in channels.items() if c < channel_max]
    channel_base = min(capped) * channels[min(capped)] if capped else channel_max * resolution
    config = GeneratorConfig(
        resolution=resolution, img_channels=img_channels, z_dim=z_dim, w_dim=w_dim,
        mapping_layers=mapping_layers, mapping_lr_multiplier=ROSINALITY_LR_MLP, channel_base=channel_base,
        channel_max=channel_max,
        use_noise="conv1.noise.weight" in g_ema,
    )
    derived = {r: config.channels(r) for r in channels}
    if derived != channels:
        raise CheckpointError(
            f"rosinality generator channel widths {channels} do not follow min(base // res, max); "
            "such a layout is not supported"
        )
    return config


def rosinality_shapes(config: GeneratorConfig, rows: list[KeyRule]) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of ``rows`` in a rosinality file of ``config`` (our generator built on the meta
    device, so nothing is allocated)."""
    from ..models.stylegan2.generator import Generator

    with torch.device("meta"):
        ours = Generator(config).state_dict()
    return {r.rosinality: tuple(_BACKWARD[r.rule](ours[r.nvidia]).shape) for r in rows if r.rosinality is not None}


def to_nvidia(
    g_ema: Mapping[str, torch.Tensor],
    config: GeneratorConfig,
    *,
    latent_avg: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """rosinality ``g_ema`` (+ ``latent_avg``) -> our state dict.

    Returns the state dict and the NVIDIA names that the file did not provide (optional buffers the
    caller must fill). Any required key missing, any unknown key, or any shape mismatch is an error.
    """
    rows = key_map(config)
    source = dict(g_ema)
    if latent_avg is not None:
        source["latent_avg"] = latent_avg.reshape(-1)
    optional = {r.rosinality for r in rows if r.optional}
    # Shapes are checked here, under the file's own names (they were named as our tensors, which the file does not
    # hold, and a tensor of another shape with as many values, such as a ToRGB bias [3], was taken).
    problems = key_problems(rosinality_shapes(config, rows), source, may_lack=optional.__contains__)
    if problems:
        raise CheckpointError("the rosinality checkpoint does not match the generator layout; " + "; ".join(problems))

    out: dict[str, torch.Tensor] = {}
    absent: list[str] = []
    filt = setup_filter(config.resample_filter)
    for r in rows:
        if r.rosinality is None:
            out[r.nvidia] = filt.clone()
        elif r.rosinality in source:
            try:
                out[r.nvidia] = _FORWARD[r.rule](source[r.rosinality]).float().contiguous()
            except (IndexError, RuntimeError) as e:
                raise CheckpointError(f"rosinality tensor {r.rosinality!r} of shape {list(source[r.rosinality].shape)} "
                                      f"does not fit the generator layout ({e})") from None
        else:
            absent.append(r.nvidia)
    return out, absent


def at_rosinality_lr(state_dict: Mapping[str, torch.Tensor], config: GeneratorConfig) -> dict[str, torch.Tensor]:
    """``state_dict`` with its mapping's weights and biases stored for rosinality's multiplier, 0.01, which its
    EqualLinear applies at run time as ours applies ``mapping_lr_multiplier``: the same mapping, whatever ours (a
    generator at 0.1 came back from a rosinality file at 0.01, its codes changed)."""
    scale = config.mapping_lr_multiplier / ROSINALITY_LR_MLP
    mapping = {f"mapping.fc{i}.{p}" for i in range(config.mapping_layers) for p in ("weight", "bias")}
    return {k: v * scale if k in mapping and scale != 1 else v for k, v in state_dict.items()}


def from_nvidia(state_dict: Mapping[str, torch.Tensor], config: GeneratorConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> rosinality ``g_ema`` plus ``latent_avg`` under its own key."""
    out = {}
    for r in key_map(config):
        if r.rosinality is None:
            continue
        if r.nvidia not in state_dict:
            raise CheckpointError(f"state dict lacks {r.nvidia!r}")
        out[r.rosinality] = _BACKWARD[r.rule](state_dict[r.nvidia]).contiguous()
    return out


def is_standard_layout(config: GeneratorConfig) -> bool:
    """True if rosinality's own ``Generator(size, style_dim, n_mlp, channel_multiplier)`` builds it."""
    if config.img_channels != 3 or config.channel_max != 512 or config.z_dim != config.w_dim:
        return False
    return config.channel_base in (16384 * m for m in (1, 2))
