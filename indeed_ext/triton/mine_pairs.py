"""Triton kernels of mine_pairs: the labels packed into int64 words, then each program's
block of rows tests tiles of candidates (an AND, a compare and an inequality per word),
counts their valid partners, draws a rank with tl.philox (the numbers of reference.partner_rank)
and finds the rank-th valid partner in a second pass by a running cumulative sum.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_PACK_ROWS = 32
_ROWS = 32  # rows per program
_CANDIDATES = 32  # candidates per tile (64 takes 246-254 registers on sm_80/90)


@triton.jit
def _pack_labels_kernel(targets_ptr, words_ptr, B, c, W, stride_b, stride_c, BLOCK_B: tl.constexpr):
    """words[b, w] = the labels w*64 .. w*64+63 of row b (targets > 0.5) as the bits of an int64."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    w = tl.program_id(1)
    bits = tl.arange(0, 64)
    cols = w * 64 + bits
    mask = (rows[:, None] < B) & (cols[None, :] < c)
    targets = tl.load(targets_ptr + rows[:, None] * stride_b + cols[None, :] * stride_c, mask=mask, other=0)
    # Distinct powers of two: their sum is their OR (bit 63 wraps to the sign, as in the C++ words).
    powers = tl.full([BLOCK_B, 64], 1, tl.int64) << bits[None, :].to(tl.int64)
    word = tl.sum(tl.where(mask & (targets > 0.5), powers, 0), axis=1)
    tl.store(words_ptr + rows * W + w, word, mask=rows < B)


@triton.jit
def _valid_partners(words_ptr, rows, row_mask, candidates, candidate_mask, W,
                    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(BLOCK_R, BLOCK_C): candidate b is a valid partner of row a (ya & yb != 0 and ya != yb)."""
    shares = tl.zeros([BLOCK_R, BLOCK_C], tl.int1)
    differs = tl.zeros([BLOCK_R, BLOCK_C], tl.int1)
    for w in range(W):
        word_a = tl.load(words_ptr + rows * W + w, mask=row_mask, other=0)
        word_b = tl.load(words_ptr + candidates * W + w, mask=candidate_mask, other=0)
        shares |= (word_a[:, None] & word_b[None, :]) != 0
        differs |= word_a[:, None] != word_b[None, :]
    return shares & differs & candidate_mask[None, :]


@triton.jit
def _mine_pairs_kernel(words_ptr, seed_ptr, index_a_ptr, index_b_ptr, is_partial_ptr, B, W,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < B
    count = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, B, BLOCK_C):
        candidates = start + tl.arange(0, BLOCK_C)
        valid = _valid_partners(words_ptr, rows, row_mask, candidates, candidates < B, W, BLOCK_R, BLOCK_C)
        count += tl.sum(valid.to(tl.int64), axis=1)

    # partner_rank: floor((hi * 2^32 + lo) * count / 2^64), Philox(seed, (0, 0, row, 0)).
    zero = tl.zeros([BLOCK_R], tl.uint32)
    lo, hi, _, _ = tl.philox(tl.load(seed_ptr), zero, zero, rows.to(tl.uint32), zero)
    n = count.to(tl.uint64)
    rank = ((hi.to(tl.uint64) * n + ((lo.to(tl.uint64) * n) >> 32)) >> 32).to(tl.int64)

    partner = rows.to(tl.int64)
    seen = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, B, BLOCK_C):
        candidates = start + tl.arange(0, BLOCK_C)
        valid = _valid_partners(words_ptr, rows, row_mask, candidates, candidates < B, W, BLOCK_R, BLOCK_C)
        position = seen[:, None] + tl.cumsum(valid.to(tl.int64), axis=1)  # 1-based among the valid ones
        hit = valid & (position == rank[:, None] + 1)
        found = tl.max(tl.where(hit, candidates[None, :], -1), axis=1)
        partner = tl.where(found >= 0, found.to(tl.int64), partner)
        seen += tl.sum(valid.to(tl.int64), axis=1)
    tl.store(index_a_ptr + rows, rows.to(tl.int64), mask=row_mask)
    tl.store(index_b_ptr + rows, partner, mask=row_mask)
    tl.store(is_partial_ptr + rows, count > 0, mask=row_mask)


def mine_pairs(targets: torch.Tensor, seed: torch.Tensor):
    """(index_a, index_b, is_partial) of checked inputs: targets (B, c), seed one int64 on their device."""
    B, c = targets.shape
    W = max(1, triton.cdiv(c, 64))
    labels = targets.view(torch.uint8) if targets.dtype == torch.bool else targets
    index_a = torch.empty(B, dtype=torch.int64, device=targets.device)
    index_b = torch.empty_like(index_a)
    is_partial = torch.empty(B, dtype=torch.bool, device=targets.device)
    if B:
        words = torch.empty((B, W), dtype=torch.int64, device=targets.device)
        _pack_labels_kernel[(triton.cdiv(B, _PACK_ROWS), W)](
            labels, words, B, c, W, labels.stride(0), labels.stride(1), BLOCK_B=_PACK_ROWS)
        _mine_pairs_kernel[(triton.cdiv(B, _ROWS),)](
            words, seed, index_a, index_b, is_partial, B, W, BLOCK_R=_ROWS, BLOCK_C=_CANDIDATES)
    return index_a, index_b, is_partial
