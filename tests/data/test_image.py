"""sRGB <-> CIE-LAB and CLAHE (the papers' colour contrast edit)."""

import pytest
import torch

from nfopt.data import clahe, lab_to_rgb, photo_patches, rgb_to_lab


def test_lab_known_colours_and_round_trip():
    white, red = torch.ones(1, 3, 1, 1), torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(rgb_to_lab(white).flatten(), torch.tensor([100.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(rgb_to_lab(red).flatten(), torch.tensor([53.24, 80.09, 67.20]), atol=0.02, rtol=0)
    x = torch.rand(3, 3, 7, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4, rtol=0)


def test_clahe_stretches_low_contrast_and_keeps_order_within_one_tile():
    g = torch.Generator().manual_seed(0)
    low = 0.4 + 0.2 * torch.rand(2, 1, 30, 29, generator=g)
    out = clahe(low, clip_limit=1.0, tiles=3)
    assert out.shape == low.shape and out.min() >= 0 and out.max() <= 1
    assert out.std() > 2 * low.std()  # contrast goes up
    assert clahe(low, clip_limit=40.0, tiles=3).std() > out.std()  # a higher clip limit equalises harder
    one = clahe(low, clip_limit=1000.0, tiles=1)  # one tile, no clipping: plain histogram equalisation
    for i in range(2):
        order = low[i].flatten().argsort()
        assert (one[i].flatten()[order].diff() >= -1e-6).all()  # monotone in the input level
        assert one[i].max() == 1.0


def test_clahe_on_colour_changes_lightness_not_hue():
    x = photo_patches(4, 32, "train")[0]
    out = clahe(x)
    lab_in, lab_out = rgb_to_lab(x), rgb_to_lab(out)
    assert (lab_out[:, 0] - lab_in[:, 0]).abs().mean() > 1.0  # lightness edited
    inside = (out > 0.02).all(1) & (out < 0.98).all(1)  # away from clipping, colour is kept
    torch.testing.assert_close(
        lab_out[:, 1:][inside[:, None].expand(-1, 2, -1, -1)],
        lab_in[:, 1:][inside[:, None].expand(-1, 2, -1, -1)],
        atol=0.5,
        rtol=0,
    )
    with pytest.raises(ValueError, match="expected"):
        clahe(torch.rand(1, 2, 8, 8))


def test_photo_patches_are_colour_labelled_and_split_apart():
    x, y = photo_patches(6, 16, "train", seed=0)
    assert x.shape == (6, 3, 16, 16) and y.tolist() == [0, 1, 0, 1, 0, 1]
    assert x.min() >= 0 and x.max() <= 1 and (x[:, 0] != x[:, 1]).any()  # colour, not grey
    x2, _ = photo_patches(6, 16, "train", seed=0)
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="crop=500"):
        photo_patches(2, 500, "test")
