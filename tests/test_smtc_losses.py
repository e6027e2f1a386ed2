"""SMTC losses on small hand-computed cases, and the batched Hungarian matching against scipy."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from raytrain.losses.smtc import (instance_loss, semantic_consistency, sinkhorn, slot_diversity,
                                  valid_instances)
from raytrain.matching import batched_assignment


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax over slots (dim 0) gives `probs` (S x N)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


def test_slot_diversity_hand_cases():
    # two slots: maps [1, .5, 0] and [0, .5, 1]; cos = .25 / 1.25 = .2
    logits = torch.tensor([[50.0, 0.0, -50.0], [-50.0, 0.0, 50.0]]).reshape(1, 1, 2, 3)
    assert slot_diversity(logits).item() == pytest.approx(0.2, abs=1e-6)
    disjoint = torch.tensor([[50.0, 50.0, -50.0], [-50.0, -50.0, 50.0]]).reshape(1, 1, 2, 3)
    assert slot_diversity(disjoint).item() == pytest.approx(0.0, abs=1e-6)
    same = torch.zeros(2, 3, 4, 5)  # every slot the uniform map: all cosines 1
    assert slot_diversity(same).item() == pytest.approx(1.0, abs=1e-6)


def test_sinkhorn_one_iteration_by_hand():
    e = math.exp(-1)
    cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    plan = sinkhorn(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 3.0]), cost, eps=1.0, iters=1)
    # a = .5 / (1 + e) for both rows; b = mu_t / (a (1 + e)) = [.5, 1.5]
    a = 0.5 / (1 + e)
    expected = torch.tensor([[a * 0.5, a * e * 1.5], [a * e * 0.5, a * 1.5]])
    torch.testing.assert_close(plan, expected)


def test_sinkhorn_marginals():
    torch.manual_seed(0)
    cost = torch.rand(3, 5, 6)
    mu_s, mu_t = torch.rand(3, 5) + 0.1, torch.rand(3, 6) + 0.1
    plan = sinkhorn(mu_s, mu_t, cost, eps=0.05, iters=3)
    torch.testing.assert_close(plan.sum(-2), mu_t / mu_t.sum(-1, keepdim=True))  # last update fixes columns
    plan = sinkhorn(mu_s, mu_t, cost, eps=0.05, iters=200)
    torch.testing.assert_close(plan.sum(-1), mu_s / mu_s.sum(-1, keepdim=True), rtol=1e-3, atol=1e-4)


def test_semantic_consistency_hand_case():
    # two frames with identical orthogonal keys: C = 1 - I, uniform marginals, plan ~ I / 2
    keys = torch.eye(2).reshape(1, 1, 2, 2).expand(1, 2, 2, 2)
    probs = [[0.8, 0.3], [0.2, 0.7]]  # slots x positions
    logits = _logits(probs).reshape(1, 1, 2, 2).expand(1, 2, 2, 2)
    entropy = [-sum(probs[s][n] * math.log(probs[s][n] + 1e-8) for s in range(2)) for n in range(2)]
    expected = 0.5 * sum(entropy)  # -sum_n 1/2 sum_s A[s,n] log A[s,n], same for both ordered pairs
    assert semantic_consistency(logits, logits, keys).item() == pytest.approx(expected, rel=1e-5)
    # the teacher target at position m is matched to the student at position n = m only
    student = _logits([[0.3, 0.8], [0.7, 0.2]]).reshape(1, 1, 2, 2).expand(1, 2, 2, 2)
    cross = -0.5 * (0.8 * math.log(0.3) + 0.2 * math.log(0.7) + 0.3 * math.log(0.8) + 0.7 * math.log(0.2))
    assert semantic_consistency(student, logits, keys).item() == pytest.approx(cross, rel=1e-4)


def test_semantic_consistency_backpropagates_to_the_student_and_needs_two_frames():
    """The loss reaches the student's logits; that the teacher gets no gradient is the training step's
    business (tests/test_smtc_task.py), the loss itself would pass one to a teacher tensor that required it."""
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 6, requires_grad=True)
    t = torch.randn(2, 3, 4, 6, requires_grad=True)
    k = torch.randn(2, 3, 6, 8, requires_grad=True)
    semantic_consistency(s, t.detach(), k.detach()).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert semantic_consistency(s, s, k).item() > 0
    assert semantic_consistency(s[:, :1], t[:, :1], k[:, :1]).item() == 0  # one frame: no ordered pairs


def test_valid_instances_filter():
    # 10 positions, 2 slots; slot 0 has p > .3 on 3 positions (area .3 > .2), slot 1 on 9
    p0 = [0.9, 0.6, 0.4] + [0.1] * 7
    logits = _logits([p0, [1 - p for p in p0]]).reshape(1, 1, 2, 10)
    semantic = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    inst = torch.tensor([[[0.6, 0.8], [0.4, math.sqrt(1 - 0.16)]],  # cos .6 and .4 with slot 0
                         [[0.8, 0.6], [0.0, 2.0]]]).reshape(1, 1, 2, 2, 2)  # cos .6 and 1 with slot 1
    relaxed = valid_instances(logits, semantic, inst, tau=0.3)
    assert relaxed.tolist() == [[[[1.0, 0.0], [1.0, 1.0]]]]
    strict = valid_instances(logits, semantic, inst, tau=0.5)  # slot 0 area .2 (not > .2); slot 1 area .8
    assert strict.tolist() == [[[[0.0, 0.0], [1.0, 1.0]]]]


def _unit(*v: float) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def test_instance_loss_hand_case():
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 1, 2, 2)
    teacher = torch.tensor([[0.6, 0.8], [0.8, -0.6]]).reshape(1, 1, 1, 2, 2)
    # cos: s0-t0 .6, s0-t1 .8, s1-t0 .8, s1-t1 -.6 -> match s0-t1, s1-t0 (pos .8 each)
    # negatives: s0-t0 relu(.6 - .5) = .1, s1-t1 relu(-1.1) = 0
    ones = torch.ones(1, 1, 1, 2)
    assert instance_loss(student, teacher, ones, ones).item() == pytest.approx((0.1 - 0.8 - 0.8) / 2, abs=1e-6)
    t_valid = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)  # t0 (s1's match) invalid: s1 keeps its zero negative
    assert instance_loss(student, teacher, ones, t_valid).item() == pytest.approx((0.1 - 0.8) / 2, abs=1e-6)
    s_valid = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)  # s0 invalid: only s1's term, normalised by 1
    assert instance_loss(student, teacher, s_valid, ones).item() == pytest.approx(-0.8, abs=1e-6)
    none = torch.zeros(1, 1, 1, 2)
    assert instance_loss(student, teacher, none, ones).item() == 0


def test_instance_loss_all_frame_pairs_and_negatives_mean():
    # P = 3: student s0 = e0 matches teacher e0, negatives e0.e1' = .7 and .55 -> mean(.2, .05)
    teacher = torch.tensor([[1.0, 0.0, 0.0], _unit(0.7, math.sqrt(1 - 0.49), 0), _unit(0.55, 0, math.sqrt(1 - 0.3025))])
    student = torch.eye(3)
    # frame 1 of the student is identical; frame 1 of the teacher has its instances permuted
    s = torch.stack([student, student]).reshape(1, 2, 1, 3, 3)
    t = torch.stack([teacher, teacher[[2, 0, 1]]]).reshape(1, 2, 1, 3, 3)
    valid_s = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).reshape(1, 2, 1, 3)
    ones = torch.ones(1, 2, 1, 3)
    per_pair = (0.2 + 0.05) / 2 - 1.0  # s0: pos 1 with its match, negatives averaged over P - 1 = 2
    # 4 pairs (i = j included), each contributes per_pair for s0; normaliser = 4 pairs x 1 valid
    assert instance_loss(s, t, valid_s, ones).item() == pytest.approx(per_pair, abs=1e-5)


def test_instance_loss_backpropagates_to_the_student():
    torch.manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(2, 2, 3, 4, 8), dim=-1).requires_grad_()
    t = torch.nn.functional.normalize(torch.randn(2, 2, 3, 4, 8), dim=-1)
    loss = instance_loss(s, t, torch.ones(2, 2, 3, 4), torch.ones(2, 2, 3, 4))
    loss.backward()
    assert s.grad.abs().sum() > 0


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5, 8, 10])
def test_batched_assignment_equals_scipy(p):
    g = torch.Generator().manual_seed(p)
    cost = torch.rand(3, 7, p, p, generator=g)
    cols = batched_assignment(cost)
    assert cols.shape == (3, 7, p) and cols.dtype == torch.long
    for idx in np.ndindex(3, 7):
        c = cost[idx].numpy()
        rows, ref = linear_sum_assignment(c)
        assert c[rows, cols[idx].numpy()].sum() == pytest.approx(c[rows, ref].sum(), abs=1e-6)
        assert cols[idx].tolist() == ref.tolist()  # random costs: the optimum is unique


def test_batched_assignment_ties_and_errors():
    cols = batched_assignment(torch.zeros(5, 4, 4))
    assert all(sorted(c) == [0, 1, 2, 3] for c in cols.tolist())
    cost = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]).to(torch.bfloat16)
    assert batched_assignment(cost).tolist() == [0, 2, 1]
    assert batched_assignment(torch.zeros(0, 4, 4)).shape == (0, 4)
    with pytest.raises(ValueError, match="P, P"):
        batched_assignment(torch.zeros(2, 3, 4))
