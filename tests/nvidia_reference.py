"""An independent reference of NVIDIA's stylegan2-ada-pytorch networks as they compute in fp32 on a CPU (test helper).

Written from the text of ``training/networks.py`` and ``torch_utils/ops/{upfirdn2d,conv2d_resample,bias_act}.py``,
following their reference paths step by step (zero insertion, padding, the flipped filter, separable filters of 8
taps or more, the transposed conv's padding arithmetic, fused and non-fused modulation), on a flat NVIDIA-named state
dict and a pickle's constructor arguments. It shares no code with the package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def setup_filter(taps) -> torch.Tensor:
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1 and f.numel() < 8:  # 8 taps or more stay separable
        f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x, f, *, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0):
    px0, px1, py0, py1 = padding
    b, c, h, w = x.shape
    x = F.pad(x.reshape(b, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(b, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = (f * gain ** (f.ndim / 2)).flip(list(range(f.ndim)))  # flip_filter=False: a true convolution
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::down, ::down]


def conv2d_resample(x, w, f, *, up=1, down=1, padding=0, groups=1, flip_weight=True):
    out_channels, in_per_group, kh, kw = w.shape
    fw = f.shape[-1]
    p0 = p1 = padding
    if up > 1:
        p0, p1 = p0 + (fw + up - 1) // 2, p1 + (fw - up) // 2
    if down > 1:
        p0, p1 = p0 + (fw - down + 1) // 2, p1 + (fw - down) // 2
    if kw == 1 and down > 1 and up == 1:
        return F.conv2d(upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1)), w, groups=groups)
    if down > 1 and up == 1:
        return F.conv2d(upfirdn2d(x, f, padding=(p0, p1, p0, p1)), w, stride=down, groups=groups)
    if up > 1:
        w = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_channels // groups, kh, kw)
        if flip_weight:  # conv_transpose2d is called with flip_weight=not flip_weight
            w = w.flip([2, 3])
        p0, p1 = p0 - (kw - 1), p1 - (kw - up)
        pt = max(min(-p0, -p1), 0)
        x = F.conv_transpose2d(x, w, stride=up, padding=pt, groups=groups)
        return upfirdn2d(x, f, padding=(p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up**2)
    assert p0 == p1 >= 0
    return F.conv2d(x, w if flip_weight else w.flip([2, 3]), padding=p0, groups=groups)


def bias_act(x, b, *, act="linear", gain=None, clamp=None):
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    gain = (math.sqrt(2) if act == "lrelu" else 1.0) if gain is None else gain
    x = x * gain if gain != 1 else x
    return x.clamp(-clamp, clamp) if clamp is not None else x


def fully_connected(sd, prefix, x, *, act="linear", lr_multiplier=1.0):
    w = sd[prefix + "weight"] * (lr_multiplier / math.sqrt(sd[prefix + "weight"].shape[1]))
    b = sd.get(prefix + "bias")
    b = b * lr_multiplier if b is not None and lr_multiplier != 1 else b
    if act == "linear" and b is not None:
        return torch.addmm(b.unsqueeze(0), x, w.t())
    return bias_act(x.matmul(w.t()), b, act=act)


def modulated_conv2d(x, weight, styles, *, noise=None, up=1, padding=0, f=None, demodulate=True, flip_weight=True,
                     fused=True):
    batch = x.shape[0]
    _, in_channels, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt() if demodulate else None
    f = torch.ones(1, 1) if f is None else f
    if not fused:
        x = x * styles.reshape(batch, -1, 1, 1)
        x = conv2d_resample(x, weight, f, up=up, padding=padding, flip_weight=flip_weight)
        x = x * dcoefs.reshape(batch, -1, 1, 1) if demodulate else x
        return x + noise if noise is not None else x
    if demodulate:
        w = w * dcoefs.reshape(batch, -1, 1, 1, 1)
    x = conv2d_resample(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, in_channels, kh, kw), f, up=up,
                        padding=padding, groups=batch, flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    return x + noise if noise is not None else x


def mapping(sd, kwargs, z, *, num_ws, truncation_psi=1.0, truncation_cutoff=None):
    m = kwargs.get("mapping_kwargs", {})
    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    for i in range(m.get("num_layers", 8)):
        x = fully_connected(sd, f"mapping.fc{i}.", x, act="lrelu", lr_multiplier=m.get("lr_multiplier", 0.01))
    x = x.unsqueeze(1).repeat(1, num_ws, 1)
    if truncation_psi != 1:
        if truncation_cutoff is None:
            x = sd["mapping.w_avg"].lerp(x, truncation_psi)
        else:
            x[:, :truncation_cutoff] = sd["mapping.w_avg"].lerp(x[:, :truncation_cutoff], truncation_psi)
    return x


def synthesis(sd, kwargs, ws, *, noise_mode="const", fused=True, noises=None):
    """``noises``: for ``noise_mode="random"``, the ``[B, 1, R, R]`` maps in layer order."""
    s = kwargs.get("synthesis_kwargs", kwargs)
    clamp, use_noise = s.get("conv_clamp"), s.get("use_noise", True)
    x = img = None
    w_idx = 0
    for res in [2**i for i in range(2, int(math.log2(kwargs["img_resolution"])) + 1)]:
        p = f"synthesis.b{res}."
        convs = ["conv1"] if res == 4 else ["conv0", "conv1"]
        block_ws = ws.narrow(1, w_idx, len(convs) + 1).unbind(1)
        w_idx += len(convs)
        if res == 4:
            x = sd[p + "const"].unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
        for w, name in zip(block_ws, convs):
            lp = f"{p}{name}."
            noise = None
            if use_noise and noise_mode == "const":
                noise = sd[lp + "noise_const"] * sd[lp + "noise_strength"]
            elif use_noise and noise_mode == "random":
                noise = noises.pop(0) * sd[lp + "noise_strength"]
            up = 2 if name == "conv0" else 1
            x = modulated_conv2d(x, sd[lp + "weight"], fully_connected(sd, lp + "affine.", w), noise=noise, up=up,
                                 padding=1, f=sd[lp + "resample_filter"], flip_weight=up == 1, fused=fused)
            x = bias_act(x, sd[lp + "bias"], act="lrelu", gain=math.sqrt(2), clamp=clamp)
        if img is not None:
            f = sd[p + "resample_filter"]
            fw = f.shape[-1]
            pad = ((fw + 1) // 2, (fw - 2) // 2) * 2
            img = upfirdn2d(img, f, up=2, padding=pad, gain=4)
        weight = sd[p + "torgb.weight"]
        styles = fully_connected(sd, p + "torgb.affine.", block_ws[-1]) / math.sqrt(weight[0].numel())
        y = bias_act(modulated_conv2d(x, weight, styles, demodulate=False, fused=fused), sd[p + "torgb.bias"],
                     clamp=clamp)
        img = img + y if img is not None else y
    return img


def conv2d_layer(sd, prefix, x, *, act="linear", down=1, gain=1.0, clamp=None):
    w = sd[prefix + "weight"] / math.sqrt(sd[prefix + "weight"][0].numel())
    x = conv2d_resample(x, w, sd[prefix + "resample_filter"], down=down, padding=w.shape[-1] // 2)
    return bias_act(x, sd.get(prefix + "bias"), act=act, gain=(math.sqrt(2) if act == "lrelu" else 1.0) * gain,
                    clamp=clamp * gain if clamp is not None else None)


def discriminator(sd, kwargs, img):
    """The resnet discriminator's logits."""
    clamp, epilogue = kwargs.get("conv_clamp"), kwargs.get("epilogue_kwargs", {})
    x = None
    for res in [2**i for i in range(int(math.log2(kwargs["img_resolution"])), 2, -1)]:
        p = f"b{res}."
        if x is None:
            x = conv2d_layer(sd, p + "fromrgb.", img, act="lrelu", clamp=clamp)
        y = conv2d_layer(sd, p + "skip.", x, down=2, gain=math.sqrt(0.5))
        x = conv2d_layer(sd, p + "conv0.", x, act="lrelu", clamp=clamp)
        x = y + conv2d_layer(sd, p + "conv1.", x, act="lrelu", down=2, gain=math.sqrt(0.5), clamp=clamp)
    group, channels = epilogue.get("mbstd_group_size", 4), epilogue.get("mbstd_num_channels", 1)
    if channels > 0:
        n, c, h, w = x.shape
        g = min(group, n) if group is not None else n
        y = x.reshape(g, -1, channels, c // channels, h, w)
        y = ((y - y.mean(dim=0)).square().mean(dim=0) + 1e-8).sqrt().mean(dim=[2, 3, 4])
        x = torch.cat([x, y.reshape(-1, channels, 1, 1).repeat(g, 1, h, w)], dim=1)
    x = conv2d_layer(sd, "b4.conv.", x, act="lrelu", clamp=clamp)
    return fully_connected(sd, "b4.out.", fully_connected(sd, "b4.fc.", x.flatten(1), act="lrelu"))
