"""Winning tickets: exact sparsity of IMP masks, top-k masks, masked training keeps zeros, and
the mask predictor's equivariance."""

import pytest
import torch

from nfopt.data import load_dataset
from nfopt.recipes.tickets import (
    MaskPredictor,
    imp_masks,
    imp_round_count,
    imp_rounds,
    init_mlps,
    keep_counts,
    ordinal_loss,
    ordinal_targets,
    topk_masks,
    train_masked,
)
from nfopt.testing import assert_equivariant
from nfopt.weightspace import NetworkSpec
from nfopt.zoo.spec import TicketSpec


def test_topk_masks_keep_exactly_k_per_network_and_layer():
    scores = [torch.randn(3, 4, 5), torch.randn(3, 2, 4)]
    masks = topk_masks(scores, [6, 1])
    assert masks[0].flatten(1).sum(1).tolist() == [6, 6, 6] and masks[1].flatten(1).sum(1).tolist() == [1, 1, 1]
    best = scores[1].flatten(1).argmax(1)
    assert torch.equal(masks[1].flatten(1).argmax(1), best)


def test_imp_reaches_the_target_sparsity_and_masked_training_keeps_pruned_weights_zero(tmp_path):
    spec = TicketSpec(name="t", widths=[8], inits=3, test_inits=1, train_steps=10, sparsity=0.9, out=str(tmp_path))
    data = load_dataset("digits")
    widths = [64, 8, 10]
    init = init_mlps(widths, [0, 1, 2])
    masks = imp_masks(init, data, spec)
    assert [int(m[0].sum()) for m in masks] == keep_counts(widths, 0.9) == [51, 8]
    trained = train_masked(init, masks, data, steps=5, batch=16, lr=1e-2)
    for w, m in zip(trained[0::2], masks):
        assert torch.all(w[m == 0] == 0) and torch.any(w[m == 1] != 0)


def test_imp_rounds_rank_weights_by_how_long_they_survive(tmp_path):
    """Each round keeps a subset of the last: survival counts go 0..R, the count kept after round
    r shrinks by the prune rate, and the weights surviving all R rounds are IMP's final mask."""
    spec = TicketSpec(name="t", widths=[8], inits=2, test_inits=1, train_steps=5, sparsity=0.9, out=str(tmp_path))
    data = load_dataset("digits")
    init = init_mlps([64, 8, 10], [0, 1])
    rounds = imp_round_count(spec)
    survived = imp_rounds(init, data, spec)
    assert rounds == 11
    for s, m, k in zip(survived, imp_masks(init, data, spec), keep_counts([64, 8, 10], 0.9)):
        assert int(s.min()) >= 0 and int(s.max()) == rounds
        assert torch.equal((s == rounds).to(m), m) and int(m[0].sum()) == k
        alive = [int((s[0] >= r).sum()) for r in range(rounds + 1)]
        assert alive == sorted(alive, reverse=True) and alive[0] == s[0].numel() and alive[1] < alive[0]


def test_ordinal_loss_prefers_scores_ordered_like_survival():
    torch.manual_seed(0)
    survived = torch.randint(0, 6, (4, 7, 9)).float()
    c = torch.linspace(-2, 2, 5)
    y, pw = ordinal_targets(survived, 5)
    assert y.shape == (4, 7, 9, 5) and torch.equal(y[..., 2], (survived >= 3).float())
    ordered = ordinal_loss(survived - 2.5, y, pw, c)
    shuffled = ordinal_loss(survived[:, torch.randperm(7)] - 2.5, y, pw, c)
    assert ordered < shuffled
    score = torch.zeros(4, 7, 9, requires_grad=True)
    ordinal_loss(score, y, pw, c).backward()
    corr = torch.corrcoef(torch.stack([-score.grad.flatten(), survived.flatten()]))[0, 1]
    assert corr > 0.5  # descending the loss raises the score of long survivors


@pytest.mark.parametrize("kind", ["np", "np_io", "hnp"])
def test_mask_predictor_is_equivariant(kind):
    """NP: every neuron permutation; with IO embeddings or HNP layers: hidden permutations only
    (their declared symmetry), and they do tell input neurons apart."""
    spec = NetworkSpec.mlp([6, 5, 4, 3])
    torch.manual_seed(0)
    model = MaskPredictor(spec, channels=3, layers=2, kind=kind, in_channels=2).double()
    assert_equivariant(model, spec, 2)
    if kind != "np":
        with pytest.raises(AssertionError):
            assert_equivariant(model, spec, 2, hidden_only=False)
    with pytest.raises(ValueError, match="kind='cnn'"):
        MaskPredictor(spec, 3, 2, kind="cnn")
