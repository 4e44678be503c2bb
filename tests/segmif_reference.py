"""Test fixture: an independent, functional re-statement of the SegMiF reference forward passes.

Written from reading github.com/JinyuanLiu-CV/SegMiF (``core/model_fusion.py``:
``Fusion_Network3_ac``, ``FeatureFusionModule``/``CrossPath``/``CrossAttention(2)``, ``DRDB``,
``Network3``/``WeTr``; ``core/mix_transformer.py``; ``core/segformer_head.py``), without
its code and without rig's modules: plain ``torch.nn.functional`` on a ``{name: tensor}``
dict. It also builds random state dicts with the reference's exact key names (and, for
the default sizes, shapes), so tests can check ``rig.model.reference`` without downloading
anything. Nothing here is used outside the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
SEGFORMER_HEADS = (1, 2, 5, 8)
FFM_HEADS = 8
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


# --------------------------------------------------------------------------- random state dicts


class _Maker:
    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.sd: dict[str, Tensor] = {}

    def randn(self, *shape: int, std: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=self.g) * std

    def conv(self, name: str, cout: int, cin: int, k: int, bias: bool = True, groups: int = 1) -> None:
        fan_in = cin // groups * k * k
        self.sd[f"{name}.weight"] = self.randn(cout, cin // groups, k, k, std=fan_in ** -0.5)
        if bias:
            self.sd[f"{name}.bias"] = self.randn(cout, std=0.1)

    def linear(self, name: str, cout: int, cin: int, bias: bool = True, std: float | None = None) -> None:
        self.sd[f"{name}.weight"] = self.randn(cout, cin, std=std if std is not None else cin ** -0.5)
        if bias:
            self.sd[f"{name}.bias"] = self.randn(cout, std=0.1)

    def norm(self, name: str, dim: int) -> None:
        self.sd[f"{name}.weight"] = 1.0 + self.randn(dim, std=0.1)
        self.sd[f"{name}.bias"] = self.randn(dim, std=0.1)

    def bn(self, name: str, dim: int) -> None:
        self.norm(name, dim)
        self.sd[f"{name}.running_mean"] = self.randn(dim, std=0.1)
        self.sd[f"{name}.running_var"] = 0.5 + torch.rand(dim, generator=self.g)
        self.sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)


def fusion_state_dict(width: int = 64, growth: int = 32, layers: int = 5, seg_dims: tuple[int, int] = (64, 128),
                      seed: int = 0) -> dict[str, Tensor]:
    """Random ``Fusion_Network3_ac`` weights (defaults: the reference's shapes), ``ffm2`` included."""
    m = _Maker(seed)
    m.conv("conv1_ir", width, 1, 3)
    m.conv("conv1_vis", width, 1, 3)
    for d in range(1, 5):
        cin = width
        for k in range(1, layers + 1):
            m.conv(f"DRDB{d}.Dcov{k}", growth, cin, 3)
            cin += growth
        m.conv(f"DRDB{d}.conv", width, cin, 1)
    m.conv("conv2", width, 2 * width, 3)
    m.sd["relu.weight"] = torch.tensor([0.2])
    for ffm in ("ffm", "ffm2"):
        p = f"{ffm}.cross"
        for i in (1, 2, 3):
            m.linear(f"{p}.channel_proj{i}", 2 * width, width)
        # small K/V weights keep the reference's pixel-sum contexts away from saturation
        m.linear(f"{p}.cross_attn.kv3", 2 * width, width, bias=False, std=0.3 * width ** -0.5)
        m.linear(f"{p}.cross_attn2.kv1", 2 * width, width, bias=False, std=0.3 * width ** -0.5)
        m.linear(f"{p}.cross_attn2.kv2", 2 * width, width, bias=False, std=0.3 * width ** -0.5)
        m.linear(f"{p}.end_proj1", width, 2 * width)
        m.linear(f"{p}.end_proj2", width, 2 * width)
        m.norm(f"{p}.norm1", width)
        m.norm(f"{p}.norm2", width)
    m.conv("conv3", width, seg_dims[0], 1)
    m.conv("conv4", width, seg_dims[1], 1)
    m.conv("conv21", width // 2, width, 3)
    m.conv("conv22", 1, width // 2, 3)
    m.sd["conv22.bias"] += 0.5  # a mostly positive output, so the clamp in SegMiF.fuse is visible only at edges
    return m.sd


def mit_state_dict(m: _Maker, prefix: str, dims: tuple[int, ...], depths: tuple[int, ...],
                   sr_ratios: tuple[int, ...] = (8, 4, 2, 1), mlp_ratio: int = 4, in_chans: int = 3) -> None:
    """Random SegFormer ``MixVisionTransformer`` weights under ``prefix`` (into ``m.sd``)."""
    cin = in_chans
    for i in range(4):
        s, d = i + 1, dims[i]
        k = 7 if i == 0 else 3
        m.conv(f"{prefix}patch_embed{s}.proj", d, cin, k)
        m.norm(f"{prefix}patch_embed{s}.norm", d)
        for j in range(depths[i]):
            b = f"{prefix}block{s}.{j}"
            m.norm(f"{b}.norm1", d)
            m.linear(f"{b}.attn.q", d, d)
            m.linear(f"{b}.attn.kv", 2 * d, d)
            m.linear(f"{b}.attn.proj", d, d)
            if sr_ratios[i] > 1:
                m.conv(f"{b}.attn.sr", d, d, sr_ratios[i])
                m.norm(f"{b}.attn.norm", d)
            m.norm(f"{b}.norm2", d)
            m.linear(f"{b}.mlp.fc1", mlp_ratio * d, d)
            m.conv(f"{b}.mlp.dwconv.dwconv", mlp_ratio * d, mlp_ratio * d, 3, groups=mlp_ratio * d)
            m.linear(f"{b}.mlp.fc2", d, mlp_ratio * d)
        m.norm(f"{prefix}norm{s}", d)
        cin = d


def segmentation_state_dict(num_classes: int = 15, dims: tuple[int, ...] = (32, 64, 160, 256),
                            depths: tuple[int, ...] = (2, 2, 2, 2), embedding_dim: int = 32,
                            seed: int = 1) -> dict[str, Tensor]:
    """Random ``Network3(backbone, num_classes)`` weights (defaults: mit_b0 sizes, a narrow head)."""
    m = _Maker(seed)
    mit_state_dict(m, "denoise_net.encoder.", dims, depths)
    for i in range(4):
        m.linear(f"denoise_net.decoder.linear_c{i + 1}.proj", embedding_dim, dims[i])
    m.conv("denoise_net.decoder.linear_fuse.conv", embedding_dim, 4 * embedding_dim, 1, bias=False)
    m.bn("denoise_net.decoder.linear_fuse.bn", embedding_dim)
    m.conv("denoise_net.decoder.linear_pred", num_classes, embedding_dim, 1)
    m.conv("denoise_net.classifier", num_classes, dims[3], 1, bias=False)
    return m.sd


def imagenet_mit_state_dict(dims: tuple[int, ...] = (32, 64, 160, 256), depths: tuple[int, ...] = (2, 2, 2, 2),
                            seed: int = 2) -> dict[str, Tensor]:
    """Random NVlabs ``mit_bN.pth`` ImageNet weights: the encoder plus its ``head`` classifier."""
    m = _Maker(seed)
    mit_state_dict(m, "", dims, depths)
    m.linear("head", 1000, dims[3])
    return m.sd


# --------------------------------------------------------------------------- forward passes


def _ln(sd: dict[str, Tensor], name: str, x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _lin(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def mit_forward(sd: dict[str, Tensor], prefix: str, x: Tensor, heads: tuple[int, ...] = SEGFORMER_HEADS
                ) -> list[Tensor]:
    """SegFormer ``MixVisionTransformer.forward_features`` (eval): four ``(B, C, h, w)`` maps."""
    outs = []
    b = x.shape[0]
    for s in range(1, 5):
        w = sd[f"{prefix}patch_embed{s}.proj.weight"]
        k = w.shape[-1]
        x = F.conv2d(x, w, sd[f"{prefix}patch_embed{s}.proj.bias"], stride=4 if s == 1 else 2, padding=k // 2)
        _, c, h, wd = x.shape
        t = _ln(sd, f"{prefix}patch_embed{s}.norm", x.flatten(2).transpose(1, 2), 1e-5)
        j = 0
        while f"{prefix}block{s}.{j}.norm1.weight" in sd:
            p = f"{prefix}block{s}.{j}"
            nh = heads[s - 1]
            # attention
            y = _ln(sd, f"{p}.norm1", t, 1e-6)
            n = y.shape[1]
            q = _lin(sd, f"{p}.attn.q", y).reshape(b, n, nh, c // nh).permute(0, 2, 1, 3)
            if f"{p}.attn.sr.weight" in sd:
                sw = sd[f"{p}.attn.sr.weight"]
                r = F.conv2d(y.permute(0, 2, 1).reshape(b, c, h, wd), sw, sd[f"{p}.attn.sr.bias"],
                             stride=sw.shape[-1])
                kv_in = _ln(sd, f"{p}.attn.norm", r.reshape(b, c, -1).permute(0, 2, 1), 1e-5)
            else:
                kv_in = y
            kv = _lin(sd, f"{p}.attn.kv", kv_in).reshape(b, -1, 2, nh, c // nh).permute(2, 0, 3, 1, 4)
            attn = (q @ kv[0].transpose(-2, -1)) * (c // nh) ** -0.5
            a = (attn.softmax(dim=-1) @ kv[1]).transpose(1, 2).reshape(b, n, c)
            t = t + _lin(sd, f"{p}.attn.proj", a)
            # Mix-FFN
            y = _lin(sd, f"{p}.mlp.fc1", _ln(sd, f"{p}.norm2", t, 1e-6))
            hid = y.shape[-1]
            y = F.conv2d(y.transpose(1, 2).reshape(b, hid, h, wd), sd[f"{p}.mlp.dwconv.dwconv.weight"],
                         sd[f"{p}.mlp.dwconv.dwconv.bias"], padding=1, groups=hid)
            t = t + _lin(sd, f"{p}.mlp.fc2", F.gelu(y.flatten(2).transpose(1, 2)))
            j += 1
        t = _ln(sd, f"{prefix}norm{s}", t, 1e-6)
        x = t.reshape(b, h, wd, -1).permute(0, 3, 1, 2)
        outs.append(x)
    return outs


def encoder_forward_fusion(seg_sd: dict[str, Tensor], image: Tensor) -> tuple[Tensor, Tensor]:
    """``encoder.forward_fusion``: stride-4 and stride-8 maps of the *un-normalised* image, at image size."""
    f = mit_forward(seg_sd, "denoise_net.encoder.", image)
    size = image.shape[-2:]
    return (F.interpolate(f[0], size=size, mode="bilinear", align_corners=False),
            F.interpolate(f[1], size=size, mode="bilinear", align_corners=False))


def segmentation_forward(seg_sd: dict[str, Tensor], rgb: Tensor) -> Tensor:
    """``Network3.forward(rgb)[2]``: ImageNet-normalised (x255 scale) SegFormer logits at stride 4."""
    mean = torch.tensor(IMAGENET_MEAN_255, dtype=rgb.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD_255, dtype=rgb.dtype).view(1, 3, 1, 1)
    feats = mit_forward(seg_sd, "denoise_net.encoder.", (rgb * 255 - mean) / std)
    p = "denoise_net.decoder"
    size = feats[0].shape[-2:]
    maps = []
    for i in (4, 3, 2, 1):
        f = feats[i - 1]
        n, _, h, w = f.shape
        e = _lin(seg_sd, f"{p}.linear_c{i}.proj", f.flatten(2).transpose(1, 2)).permute(0, 2, 1).reshape(n, -1, h, w)
        maps.append(e if i == 1 else F.interpolate(e, size=size, mode="bilinear", align_corners=False))
    x = F.conv2d(torch.cat(maps, dim=1), seg_sd[f"{p}.linear_fuse.conv.weight"])
    x = F.batch_norm(x, seg_sd[f"{p}.linear_fuse.bn.running_mean"], seg_sd[f"{p}.linear_fuse.bn.running_var"],
                     seg_sd[f"{p}.linear_fuse.bn.weight"], seg_sd[f"{p}.linear_fuse.bn.bias"], False, 0.0, 1e-5)
    return F.conv2d(F.relu(x), seg_sd[f"{p}.linear_pred.weight"], seg_sd[f"{p}.linear_pred.bias"])


def _drdb(sd: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    feats = x
    k = 1
    while f"{name}.Dcov{k}.weight" in sd:
        y = F.relu(F.conv2d(feats, sd[f"{name}.Dcov{k}.weight"], sd[f"{name}.Dcov{k}.bias"], padding=2, dilation=2))
        feats = torch.cat([feats, y], dim=1)
        k += 1
    return x + F.relu(F.conv2d(feats, sd[f"{name}.conv.weight"], sd[f"{name}.conv.bias"]))


def _heads(t: Tensor, nh: int) -> Tensor:  # (B, N, C) -> (B, h, N, d)
    b, n, c = t.shape
    return t.reshape(b, n, nh, c // nh).permute(0, 2, 1, 3)


def _merge(t: Tensor) -> Tensor:  # (B, h, N, d) -> (B, N, C)
    b, h, n, d = t.shape
    return t.permute(0, 2, 1, 3).reshape(b, n, h * d)


def _ctx(sd: dict[str, Tensor], name: str, t: Tensor, nh: int) -> Tensor:
    """``(K^T V) * d^-1/2`` soft-maxed over dim -2, per head: ``(B, h, d, d)``."""
    b, n, c = t.shape
    kv = F.linear(t, sd[f"{name}.weight"]).reshape(b, n, 2, nh, c // nh).permute(2, 0, 3, 1, 4)
    return ((kv[0].transpose(-2, -1) @ kv[1]) * (c // nh) ** -0.5).softmax(dim=-2)


def _ffm(sd: dict[str, Tensor], name: str, x1: Tensor, x2: Tensor, seg: Tensor, nh: int = FFM_HEADS
         ) -> tuple[Tensor, Tensor]:
    """``FeatureFusionModule.forward`` (``CrossPath`` with both cross attentions)."""
    b, _, h, w = x1.shape
    t1, t2, t3 = (x.flatten(2).transpose(1, 2) for x in (x1, x2, seg))
    p = f"{name}.cross"
    y1, u1 = F.relu(_lin(sd, f"{p}.channel_proj1", t1)).chunk(2, dim=-1)
    y2, u2 = F.relu(_lin(sd, f"{p}.channel_proj2", t2)).chunk(2, dim=-1)
    y3, u3 = F.relu(_lin(sd, f"{p}.channel_proj3", t3)).chunk(2, dim=-1)
    ctx3 = _ctx(sd, f"{p}.cross_attn.kv3", u3, nh)  # CrossAttention: modality queries, segmentation context
    v1, v2 = _merge(_heads(u1, nh) @ ctx3), _merge(_heads(u2, nh) @ ctx3)
    ctx1 = _ctx(sd, f"{p}.cross_attn2.kv1", y1, nh)  # CrossAttention2: segmentation queries, modality contexts
    ctx2 = _ctx(sd, f"{p}.cross_attn2.kv2", y2, nh)
    q3 = _heads(y3, nh)
    z1, z2 = _merge(q3 @ ctx1), _merge(q3 @ ctx2)
    o1 = _ln(sd, f"{p}.norm1", t1 + _lin(sd, f"{p}.end_proj1", torch.cat((z1, v1), dim=-1)), 1e-5)
    o2 = _ln(sd, f"{p}.norm2", t2 + _lin(sd, f"{p}.end_proj2", torch.cat((z2, v2), dim=-1)), 1e-5)
    return (o1.reshape(b, h, w, -1).permute(0, 3, 1, 2), o2.reshape(b, h, w, -1).permute(0, 3, 1, 2))


def fusion_forward(sd: dict[str, Tensor], ir: Tensor, vis: Tensor, out1: Tensor, out2: Tensor) -> Tensor:
    """``Fusion_Network3_ac.forward(ir, vis, out1, out2)``; ``out1``, ``out2`` at image resolution.

    Channel 0 of ``vis`` is used (the reference's ``vis[:, 0:1]``); ``ffm`` serves both depths.
    """
    a = sd["relu.weight"]

    def act(x: Tensor) -> Tensor:
        return F.prelu(x, a)

    def conv3x3(name: str, x: Tensor) -> Tensor:
        return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    x1 = _drdb(sd, "DRDB1", act(conv3x3("conv1_ir", ir[:, 0:1])))
    x2 = _drdb(sd, "DRDB2", act(conv3x3("conv1_vis", vis[:, 0:1])))
    x1, x2 = _ffm(sd, "ffm", x1, x2, F.conv2d(out1, sd["conv3.weight"], sd["conv3.bias"]))
    x1, x2 = _drdb(sd, "DRDB3", x1), _drdb(sd, "DRDB4", x2)
    x1, x2 = _ffm(sd, "ffm", x1, x2, F.conv2d(out2, sd["conv4.weight"], sd["conv4.bias"]))
    f = act(conv3x3("conv2", torch.cat([x1, x2], dim=1)))
    f = act(conv3x3("conv21", f))
    return act(conv3x3("conv22", f))
