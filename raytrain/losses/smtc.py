"""SMTC losses: slot diversity, Sinkhorn semantic consistency, valid-instance filter, instance consistency.

Shapes: B clips, T frames, S semantic slots, P instances per slot, N = h*w positions, D channels.
A = softmax over slots of the semantic logits. All losses are computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raytrain.matching import batched_assignment

RELAXED_TAU = 0.3
STRICT_TAU = 0.5


def slot_diversity(logits: Tensor) -> Tensor:
    """L_diff (`--entro_cons`) for semantic logits B x T x S x N.

    m_s = normalize_N(A_s + 1e-8);  L = mean over b, t and pairs s != s' of <m_s, m_s'>.
    """
    maps = F.normalize(logits.float().softmax(dim=-2) + 1e-8, dim=-1)
    gram = maps @ maps.transpose(-1, -2)
    s = gram.shape[-1]
    off_diag = gram.sum() - gram.diagonal(dim1=-2, dim2=-1).sum()
    return off_diag / (gram.numel() // (s * s) * s * (s - 1))


@torch.no_grad()
def sinkhorn(mu_s: Tensor, mu_t: Tensor, cost: Tensor, eps: float = 0.05, iters: int = 3) -> Tensor:
    """Entropic OT plan for batched marginals mu_s [..., N], mu_t [..., M] and cost [..., N, M].

    K = exp(-cost / eps); marginals normalised to sum 1; b = 1; `iters` times: a = mu_s / (K b), b = mu_t / (K^T a);
    plan = diag(a) K diag(b) (column sums equal mu_t exactly, row sums approximately mu_s).
    """
    kernel = torch.exp(-cost / eps)
    mu_s = mu_s / mu_s.sum(dim=-1, keepdim=True)
    mu_t = mu_t / mu_t.sum(dim=-1, keepdim=True)
    b = torch.ones_like(mu_t)
    for _ in range(iters):
        a = mu_s / (kernel @ b.unsqueeze(-1)).squeeze(-1)
        b = mu_t / (a.unsqueeze(-2) @ kernel).squeeze(-2)
    return a.unsqueeze(-1) * kernel * b.unsqueeze(-2)


def semantic_consistency(logits_s: Tensor, logits_t: Tensor, keys_t: Tensor, eps: float = 0.05,
                         iters: int = 3) -> Tensor:
    """L_cons (`--bi_cons`): student logits at frame i vs teacher logits at frame j, for all ordered i != j.

    f = normalize(teacher keys); C = 1 - f_i f_j^T (N x N); mu = ||f||_1 per position;
    Pi = sinkhorn(mu_i, mu_j, C) without gradient;
    L = mean over (b, i, j) of -sum_{n,m} Pi[n,m] sum_s A^t_j[s,m] log(A^s_i[s,n] + 1e-8).
    """
    t = logits_s.shape[1]
    frames = torch.arange(t, device=logits_s.device)
    i, j = (idx.reshape(-1) for idx in torch.meshgrid(frames, frames, indexing="ij"))
    i, j = i[i != j], j[i != j]
    if i.numel() == 0:
        return logits_s.new_zeros((), dtype=torch.float32)
    feats = F.normalize(keys_t.float(), dim=-1)
    f_i, f_j = feats[:, i], feats[:, j]
    plan = sinkhorn(f_i.abs().sum(-1), f_j.abs().sum(-1), 1 - f_i @ f_j.transpose(-1, -2), eps, iters)
    log_a_s = torch.log(logits_s.float().softmax(dim=2) + 1e-8)[:, i]  # B x pairs x S x N
    a_t = logits_t.float().softmax(dim=2)[:, j]  # B x pairs x S x M
    cross = log_a_s.transpose(-1, -2) @ a_t  # B x pairs x N x M
    return -(plan * cross).sum(dim=(-1, -2)).mean()


@torch.no_grad()
def valid_instances(logits: Tensor, semantic: Tensor, instances: Tensor, tau: float = RELAXED_TAU) -> Tensor:
    """Valid(s, p) = 1[cos(semantic_s, instance_{s,p}) > 0.5] * 1[mean_N 1[A_s > tau] > 0.2].

    logits B x T x S x N, semantic B x T x S x D, instances (raw, not projected) B x T x S x P x D;
    returns B x T x S x P float 0/1. tau is 0.3 (relaxed, upstream default) or 0.5 (strict).
    """
    area = (logits.float().softmax(dim=-2) > tau).float().mean(dim=-1)
    cos = torch.einsum("btsd,btspd->btsp", F.normalize(semantic.float(), dim=-1),
                       F.normalize(instances.float(), dim=-1))
    return ((cos > 0.5) & (area > 0.2).unsqueeze(-1)).float()


def instance_loss(proj_s: Tensor, proj_t: Tensor, valid_s: Tensor, valid_t: Tensor) -> Tensor:
    """L_inst over all T^2 frame pairs (i = j included) for projected, L2-normalised instances B x T x S x P x D.

    For student frame i and teacher frame j, each (b, s): Hungarian matching on 1 - cos between the student's
    and the teacher's P instances; pos = cos with the match, negatives = the other P-1 teacher instances of s.
    term = valid_s[i] * (mean_neg ReLU(cos - 0.5) - valid_t[j](match) * pos);
    L = sum of terms / sum over pairs of (valid_s[i] + 1e-10).
    """
    t, p = proj_s.shape[1], proj_s.shape[3]
    cos = torch.einsum("bispd,bjsqd->bijspq", proj_s.float(), proj_t.float())  # B x Ti x Tj x S x P x P
    match = batched_assignment(1 - cos.detach()).unsqueeze(-1)  # B x Ti x Tj x S x P x 1
    pos = cos.gather(-1, match).squeeze(-1)
    is_neg = torch.ones_like(cos, dtype=torch.bool).scatter_(-1, match, False)
    neg = (F.relu(cos - 0.5) * is_neg).sum(-1) / max(p - 1, 1)
    v_t = valid_t.float()[:, None, :, :, None, :].expand(-1, t, -1, -1, p, -1)  # B x Ti x Tj x S x P x Q
    v_t = v_t.gather(-1, match).squeeze(-1)
    v_s = valid_s.float().unsqueeze(2)  # B x Ti x 1 x S x P
    terms = v_s * (neg - v_t * pos)
    return terms.sum() / (t * (valid_s.float() + 1e-10).sum())
