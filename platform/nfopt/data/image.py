"""Image operations for INR edits, batched in torch: sRGB <-> CIE-LAB and contrast-limited adaptive
histogram equalisation (CLAHE), the NFN paper's colour "contrast" edit (CLAHE on the L channel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clahe", "lab_to_rgb", "rgb_to_lab"]

# sRGB (D65) <-> XYZ, and the D65 white point
_RGB2XYZ = torch.tensor(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_EPS = (6 / 29) ** 3


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``(B, 3, H, W)`` in [0, 1] -> CIE-LAB ``(B, 3, H, W)``: L in [0, 100], a and b about [-128, 127]."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _RGB2XYZ.to(rgb), lin) / _WHITE.to(rgb)[:, None, None]
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`; the result is clipped to [0, 1] (out-of-gamut colours)."""
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], 1)
    xyz = torch.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * _WHITE.to(lab)[:, None, None]
    lin = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2XYZ).to(lab), xyz).clamp(0, 1)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * lin).clamp(0, 1)


def _equalize(v: torch.Tensor, clip_limit: float, tiles: int) -> torch.Tensor:
    """CLAHE of one channel ``v`` ``(B, H, W)`` in [0, 1], quantised to 256 levels."""
    bsz, h, w = v.shape
    th, tw = -(-h // tiles), -(-w // tiles)  # tile size (the image is padded up to whole tiles)
    q = (v * 255).round().long().clamp(0, 255)
    pad = F.pad(q[:, None].float(), (0, tw * tiles - w, 0, th * tiles - h), mode="reflect")[:, 0].long()
    blocks = pad.reshape(bsz, tiles, th, tiles, tw).permute(0, 1, 3, 2, 4).reshape(bsz, tiles, tiles, th * tw)
    hist = F.one_hot(blocks, 256).sum(3).float()  # (B, T, T, 256)
    area = th * tw
    clip = max(1.0, clip_limit * area / 256)
    excess = (hist - clip).clamp_min(0).sum(-1, keepdim=True)
    hist = hist.clamp_max(clip) + excess / 256  # clipped counts spread evenly over all levels
    lut = hist.cumsum(-1) / area  # (B, T, T, 256) in [0, 1]
    # each pixel blends the maps of the four nearest tile centres (bilinear in tile coordinates)
    ty = ((torch.arange(h, dtype=v.dtype) + 0.5) / th - 0.5).clamp(0, tiles - 1)
    tx = ((torch.arange(w, dtype=v.dtype) + 0.5) / tw - 0.5).clamp(0, tiles - 1)
    y0, x0 = ty.floor().long(), tx.floor().long()
    y1, x1 = (y0 + 1).clamp_max(tiles - 1), (x0 + 1).clamp_max(tiles - 1)
    fy, fx = (ty - y0)[:, None], (tx - x0)[None, :]
    bidx = torch.arange(bsz)[:, None, None]

    def look(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return lut[bidx, yi[None, :, None], xi[None, None, :], q]  # (B, H, W)

    top = look(y0, x0) * (1 - fx) + look(y0, x1) * fx
    bottom = look(y1, x0) * (1 - fx) + look(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def clahe(images: torch.Tensor, clip_limit: float = 1.0, tiles: int = 3) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of ``(B, C, H, W)`` images in [0, 1].

    Grey images (``C = 1``) are equalised directly; colour images (``C = 3``, sRGB) on the
    lightness of CIE-LAB, keeping the colour channels (as the NFN paper's contrast edit does).
    ``tiles`` x ``tiles`` tiles, each with its own histogram clipped at
    ``max(1, clip_limit * tile_pixels / 256)`` counts per level (the excess is spread over all
    levels) and mapped through its cumulative sum; pixels blend the four nearest tiles' maps."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (B, 1 or 3, H, W), got {tuple(images.shape)}")
    if tiles < 1 or clip_limit <= 0:
        raise ValueError(f"need tiles >= 1 and clip_limit > 0, got tiles={tiles}, clip_limit={clip_limit}")
    if images.shape[1] == 1:
        return _equalize(images[:, 0], clip_limit, tiles)[:, None]
    lab = rgb_to_lab(images)
    light = _equalize(lab[:, 0] / 100, clip_limit, tiles) * 100
    return lab_to_rgb(torch.cat([light[:, None], lab[:, 1:]], 1))
