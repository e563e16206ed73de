"""Exact mask math on hand-written weights: hard_mask, thresholds, the exact global cut, ThresholdMask."""

from __future__ import annotations

import pytest
import torch

from fcpts.core.masks import exact_global_masks, hard_mask, row_balanced_flags, target_zeros, threshold_for_sparsity

# |w| = 0.1 ... 0.8, shuffled and with mixed signs.
W8 = torch.tensor([[0.5, -0.1, 0.8, -0.3, 0.2, -0.7, 0.4, -0.6]])


def test_hard_mask_is_strictly_greater_than_threshold():
    assert hard_mask(W8, 0.35).tolist() == [[True, False, True, False, False, True, True, True]]
    # A weight exactly at the threshold is pruned (|w| > t, not >=).
    assert hard_mask(torch.tensor([0.5, -0.5, 0.6]), 0.5).tolist() == [False, False, True]
    assert hard_mask(W8, torch.tensor(0.0)).all()
    assert not hard_mask(W8, 0.8).any()


@pytest.mark.parametrize(
    ("sparsity", "zeros", "expected"),
    [
        (0.5, 4, [[True, False, True, False, False, True, False, True]]),
        (0.25, 2, [[True, False, True, True, False, True, True, True]]),
        (0.75, 6, [[False, False, True, False, False, True, False, False]]),
        (0.3, 2, [[True, False, True, True, False, True, True, True]]),  # round(2.4) = 2
        (0.8, 6, [[False, False, True, False, False, True, False, False]]),  # round(6.4) = 6
        (0.0, 0, [[True] * 8]),
        (1.0, 8, [[False] * 8]),
    ],
)
def test_threshold_for_sparsity_gives_the_hand_written_mask(sparsity, zeros, expected):
    t = threshold_for_sparsity(W8, sparsity)
    assert t > 0
    mask = hard_mask(W8, t)
    assert mask.tolist() == expected
    assert int((~mask).sum()) == zeros


def test_threshold_for_sparsity_sits_halfway_between_pruned_and_kept():
    assert threshold_for_sparsity(W8, 0.5) == pytest.approx(0.45, abs=1e-7)
    assert threshold_for_sparsity(W8, 0.25) == pytest.approx(0.25, abs=1e-7)
    # Keep-all stays positive even with an exact zero weight... and then prunes only that zero.
    t = threshold_for_sparsity(torch.tensor([0.0, 0.3, 0.2]), 0.0)
    assert t > 0
    assert hard_mask(torch.tensor([0.0, 0.3, 0.2]), t).tolist() == [False, True, True]


def test_target_zeros_rounds():
    assert target_zeros(0.9, 1001) == 901
    assert target_zeros(0.5, 743) == 372  # round(371.5) -> banker's rounding: 372
    assert target_zeros(0.77, 743) == round(0.77 * 743) == 572
    assert target_zeros(0.99, 743) == 736


def test_exact_global_masks_single_layer():
    w = [torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]])]
    assert exact_global_masks(w, [0.35], 3)[0].int().tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]
    # Asking for more (or fewer) zeros than the threshold gives moves the cut: it scales t.
    assert exact_global_masks(w, [0.35], 5)[0].int().tolist() == [[0, 0, 0, 0, 0, 1, 1, 1]]
    assert exact_global_masks(w, [0.35], 1)[0].int().tolist() == [[0, 1, 1, 1, 1, 1, 1, 1]]
    assert exact_global_masks(w, [0.35], 0)[0].all()
    assert not exact_global_masks(w, [0.35], 8)[0].any()


def test_exact_global_masks_two_layers_by_relative_score():
    w1 = torch.tensor([0.1, 0.2, 0.3, 0.4])  # t=0.25 -> scores 0.4 0.8 1.2 1.6
    w2 = torch.tensor([[0.5, 3.0], [1.5, 2.5]])  # t=2.0 -> scores 0.25 1.5 0.75 1.25
    ts = [0.25, 2.0]
    # 4 zeros: exactly the learned thresholds' own masks (scores <= 1).
    m1, m2 = exact_global_masks([w1, w2], ts, 4)
    assert m1.tolist() == [False, False, True, True]
    assert m2.tolist() == [[False, True], [False, True]]
    # 5 zeros: the next-lowest score is w1[2] (1.2), not w2[3] (1.25).
    m1, m2 = exact_global_masks([w1, w2], ts, 5)
    assert m1.tolist() == [False, False, False, True]
    assert m2.tolist() == [[False, True], [False, True]]
    # 3 zeros: the highest pruned score (w1[1], 0.8) comes back.
    m1, m2 = exact_global_masks([w1, w2], ts, 3)
    assert m1.tolist() == [False, True, True, True]
    assert m2.tolist() == [[False, True], [False, True]]
    assert m2.shape == w2.shape and m1.dtype == torch.bool


def test_exact_global_masks_tie_break_is_layer_then_index_and_zeros_go_first():
    ones = [torch.ones(3), torch.ones(3)]
    m1, m2 = exact_global_masks(ones, [1.0, 1.0], 4)
    assert m1.tolist() == [False, False, False]
    assert m2.tolist() == [False, True, True]
    # Exact zeros score 0 and are pruned before anything else, in any layer.
    w = [torch.tensor([0.5, 0.6]), torch.tensor([0.7, 0.0])]
    m1, m2 = exact_global_masks(w, [0.1, 0.1], 1)
    assert m1.tolist() == [True, True]
    assert m2.tolist() == [True, False]


def test_exact_global_masks_tiny_threshold_keeps_a_layer_dense():
    big = torch.tensor([0.1, 0.2, 0.3])
    small = torch.tensor([0.4, 0.5, 0.6, 0.7])
    # A tiny threshold on `big` makes its scores huge: all 3 zeros come from `small`.
    m_big, m_small = exact_global_masks([big, small], [1e-6, 0.55], 3)
    assert m_big.all()
    assert m_small.tolist() == [False, False, False, True]


def test_exact_global_masks_rejects_impossible_counts():
    with pytest.raises(ValueError):
        exact_global_masks([torch.ones(3)], [1.0], 4)
    with pytest.raises(ValueError):
        exact_global_masks([torch.ones(3)], [1.0], -1)


def test_row_balanced_flags_keep_the_count_with_a_dead_row():
    # Row 0 is zero already (scores -1: zeros_first); its 4 zeros exceed its share of 2, so the
    # other rows prune one fewer each and the layer holds exactly 6.
    scores = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    flags = row_balanced_flags(scores, 6)
    assert flags.int().tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 1]]
    assert int(row_balanced_flags(scores, 2).sum()) == 4  # fewer than the zeros already there: all stay
