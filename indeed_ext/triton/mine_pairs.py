"""Triton kernels of mine_pairs and mine_pairs_cooccur: the labels packed into int64 words, then
each program's block of rows tests tiles of candidates (an AND, a compare and an inequality per
word), counts their valid partners, draws a rank with tl.philox (the numbers of
reference.partner_rank) and finds the rank-th valid partner in a second pass by a running
cumulative sum.

mine_pairs_cooccur runs the same kernel (WEIGHTED): first the batch's co-count matrix and the
tables of the labels' masses (two kernels over tiles of label pairs), and each row's total mass
(the sums of S[i, j] * count(i, j) over its labels i and all j, from (rows, i, j) tiles); then per
row the label where the cumulative mass passes the draw, a pass over that label's j for the
contrast (reference.mine_pairs_cooccur), and the partner among the contrast's rows in the
candidate pass. Rows whose masses are all 0 keep mine_pairs' draw, whose count pass is skipped
when a block has none. With a load cap (CAPPED), R = the sum over rows of floor(2^Q / W) at the
pairs of their labels (a kernel over label tiles, as the co-counts), its tables, and each row's
load, the total of the same kernel with R's tables; the draw then keeps or redraws its partner
(a second count and candidate pass for the blocks with a redrawn row).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRETING

_PACK_ROWS = 32
_ROWS = 32  # rows per program
_CANDIDATES = 32  # candidates per tile (64 takes 246-254 registers on sm_80/90)
# Labels i x labels j per (rows, i, j) tile of the rows' contrasts. The interpreter pays per
# operation, not per element: there larger tiles (still several for c > 64, as the tests have).
_CONTRAST_LABELS = (64, 64) if INTERPRETING else (16, 8)
_TABLE_LABELS, _CO_ROWS = 16, 8  # tiles of the (c, c) tables: labels x labels, and rows per co-count step


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
def _has_labels(words_ptr, rows, row_mask, labels, label_mask, W):
    """(rows, labels) int64, 1 where the row has the label (0 where masked)."""
    mask = row_mask[:, None] & label_mask[None, :]
    word = tl.load(words_ptr + rows[:, None] * W + labels[None, :] // 64, mask=mask, other=0)
    return (word >> (labels[None, :] % 64).to(tl.int64)) & 1


@triton.jit
def _co_counts_kernel(words_ptr, co_ptr, B, c, W, BLOCK_L: tl.constexpr, BLOCK_B: tl.constexpr):
    """co[i, j] = the rows carrying labels i and j, for a tile of (i, j)."""
    first = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    second = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    both = tl.zeros([BLOCK_L, BLOCK_L], tl.int64)
    for start in range(0, B, BLOCK_B):
        rows = start + tl.arange(0, BLOCK_B)
        has_first = _has_labels(words_ptr, rows, rows < B, first, first < c, W)
        has_second = _has_labels(words_ptr, rows, rows < B, second, second < c, W)
        both += tl.sum(has_first[:, :, None] & has_second[:, None, :], axis=0)
    mask = (first[:, None] < c) & (second[None, :] < c)
    tl.store(co_ptr + first[:, None] * c + second[None, :], both, mask=mask)


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
def _rank(lo, hi, count):
    """partner_rank: floor((hi * 2^32 + lo) * count / 2^64) for count < 2^31."""
    n = count.to(tl.uint64)
    return ((hi.to(tl.uint64) * n + ((lo.to(tl.uint64) * n) >> 32)) >> 32).to(tl.int64)


@triton.jit
def _mulhi64(u_lo, u_hi, total):
    """floor((u_hi * 2^32 + u_lo) * total / 2^64) for 0 <= total < 2^63, from 32-bit limbs."""
    t = total.to(tl.uint64)
    t_lo, t_hi = t & 0xFFFFFFFF, t >> 32
    a, b = u_lo.to(tl.uint64), u_hi.to(tl.uint64)
    cross, other_cross = b * t_lo, a * t_hi
    middle = ((a * t_lo) >> 32) + (cross & 0xFFFFFFFF) + (other_cross & 0xFFFFFFFF)
    return (b * t_hi + (cross >> 32) + (other_cross >> 32) + (middle >> 32)).to(tl.int64)


@triton.jit
def _contrast_tile(weights_ptr, co_ptr, firsts, first_mask, seconds, c):
    """The (firsts, seconds) tiles of S[i, j] (0 on the diagonal, which is no contrast) and co[i, j],
    0 where masked; with their offsets and mask into the (c, c) tables."""
    mask = first_mask[:, None] & (seconds[None, :] < c)
    offsets = firsts[:, None] * c + seconds[None, :]
    weight = tl.load(weights_ptr + offsets, mask=mask & (firsts[:, None] != seconds[None, :]), other=0)
    co_ij = tl.load(co_ptr + offsets, mask=mask, other=0)
    return weight, co_ij, offsets, mask


@triton.jit
def _contrast_tables_kernel(weights_ptr, co_ptr, alone_ptr, joined_ptr, c, BLOCK_L: tl.constexpr):
    """For a tile of labels i: alone[i] = sum_j S[i, j] co[i, j] and joined[i, j] = S[i, j] (co[i, i] -
    2 co[i, j]), the diagonal of S taken as 0 (see _label_masses)."""
    firsts = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    first_mask = firsts < c
    co_ii = tl.load(co_ptr + firsts * c + firsts, mask=first_mask, other=0)
    alone = tl.zeros([BLOCK_L], tl.int64)
    for start in range(0, c, BLOCK_L):
        weight, co_ij, offsets, mask = _contrast_tile(weights_ptr, co_ptr, firsts, first_mask,
                                                      start + tl.arange(0, BLOCK_L), c)
        alone += tl.sum(weight * co_ij, axis=1)
        tl.store(joined_ptr + offsets, weight * (co_ii[:, None] - 2 * co_ij), mask=mask)
    tl.store(alone_ptr + firsts, alone, mask=first_mask)


@triton.jit
def _label_masses(words_ptr, alone_ptr, joined_ptr, rows, row_mask, firsts, c, W,
                  BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """(rows, firsts) int64: the mass of the contrasts (i, j) of each row summed over j, 0 for a row
    without i. The count of (i, j) is co[i, j] for a row without j and co[i, i] - co[i, j] for a row
    with it, so the sum is alone[i] + the sum of joined[i, j] over the row's labels j."""
    first_mask = firsts < c
    masses = tl.zeros([BLOCK_R, BLOCK_I], tl.int64) + tl.load(alone_ptr + firsts, mask=first_mask, other=0)[None, :]
    for start in range(0, c, BLOCK_J):
        seconds = start + tl.arange(0, BLOCK_J)
        second_mask = seconds < c
        has_j = _has_labels(words_ptr, rows, row_mask, seconds, second_mask, W)
        joined = tl.load(joined_ptr + firsts[:, None] * c + seconds[None, :],
                         mask=first_mask[:, None] & second_mask[None, :], other=0)
        masses += tl.sum(has_j[:, None, :] * joined[None, :, :], axis=2)
    return tl.where(_has_labels(words_ptr, rows, row_mask, firsts, first_mask, W) != 0, masses, 0)


@triton.jit
def _row_totals_kernel(words_ptr, alone_ptr, joined_ptr, totals_ptr, B, c, W,
                       BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """totals[a] = the sum of row a's label masses: its total mass W_a with the masses' tables, its load
    with R's (int64 arithmetic wraps around 2^64 on the way; the sums, below 2^63, come out exact)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < B
    total = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, c, BLOCK_I):
        firsts = start + tl.arange(0, BLOCK_I)
        masses = _label_masses(words_ptr, alone_ptr, joined_ptr, rows, row_mask, firsts, c, W, BLOCK_R, BLOCK_I, BLOCK_J)
        total += tl.sum(masses, axis=1)
    tl.store(totals_ptr + rows, total, mask=row_mask)


@triton.jit
def _load_shares_kernel(words_ptr, totals_ptr, shares_ptr, B, c, W, scale, BLOCK_L: tl.constexpr, BLOCK_B: tl.constexpr):
    """R[i, j] = the sum of floor(2^scale / W_a) over the rows a with labels i and j and W_a > 0, for a tile of (i, j)."""
    first = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    second = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    both = tl.zeros([BLOCK_L, BLOCK_L], tl.int64)
    for start in range(0, B, BLOCK_B):
        rows = start + tl.arange(0, BLOCK_B)
        total = tl.load(totals_ptr + rows, mask=rows < B, other=0)
        share = tl.where(total > 0, (tl.full([BLOCK_B], 1, tl.int64) << scale) // tl.maximum(total, 1), 0)
        has_first = _has_labels(words_ptr, rows, rows < B, first, first < c, W)
        has_second = _has_labels(words_ptr, rows, rows < B, second, second < c, W)
        both += tl.sum((has_first[:, :, None] & has_second[:, None, :]) * share[:, None, None], axis=0)
    mask = (first[:, None] < c) & (second[None, :] < c)
    tl.store(shares_ptr + first[:, None] * c + second[None, :], both, mask=mask)


@triton.jit
def _draw_contrasts(words_ptr, weights_ptr, co_ptr, alone_ptr, joined_ptr, rows, row_mask, total, u_lo, u_hi, c, W,
                    BLOCK_R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    """Per row of total mass `total`: (i, j, count(i, j), whether the row has j) of the contrast drawn
    with words 2, 3 (u_lo, u_hi): the first whose cumulative mass, over i then j ascending, exceeds
    the draw. Meaningless where the total is 0."""
    drawn = _mulhi64(u_lo, u_hi, total)

    # The label i, and what is left of the draw past the masses of the labels before it.
    first = tl.zeros([BLOCK_R], tl.int64)
    left = tl.zeros([BLOCK_R], tl.int64)
    before = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, c, BLOCK_I):
        firsts = start + tl.arange(0, BLOCK_I)
        masses = _label_masses(words_ptr, alone_ptr, joined_ptr, rows, row_mask, firsts, c, W, BLOCK_R, BLOCK_I, BLOCK_J)
        below = before[:, None] + tl.cumsum(masses, axis=1) - masses  # the cumulative mass before each label
        hit = (below <= drawn[:, None]) & (drawn[:, None] < below + masses)  # one label per row, over all tiles
        found = tl.max(hit.to(tl.int32), axis=1) > 0
        first = tl.where(found, tl.max(tl.where(hit, firsts[None, :], -1), axis=1).to(tl.int64), first)
        left = tl.where(found, tl.sum(tl.where(hit, drawn[:, None] - below, 0), axis=1), left)
        before += tl.sum(masses, axis=1)

    # The label j among i's contrasts, in the same way.
    second = tl.zeros([BLOCK_R], tl.int64)
    count = tl.zeros([BLOCK_R], tl.int64)
    has_second = tl.zeros([BLOCK_R], tl.int64)
    before = tl.zeros([BLOCK_R], tl.int64)
    co_ii = tl.load(co_ptr + first * c + first, mask=row_mask, other=0)
    for start in range(0, c, BLOCK_J):
        seconds = start + tl.arange(0, BLOCK_J)
        weight, co_ij, _, _ = _contrast_tile(weights_ptr, co_ptr, first, row_mask, seconds, c)
        has_j = _has_labels(words_ptr, rows, row_mask, seconds, seconds < c, W)
        counts = tl.where(has_j != 0, co_ii[:, None] - co_ij, co_ij)
        masses = weight * counts
        below = before[:, None] + tl.cumsum(masses, axis=1) - masses
        hit = (below <= left[:, None]) & (left[:, None] < below + masses)
        found = tl.max(hit.to(tl.int32), axis=1) > 0
        second = tl.where(found, tl.max(tl.where(hit, seconds[None, :], -1), axis=1).to(tl.int64), second)
        count = tl.where(found, tl.sum(tl.where(hit, counts, 0), axis=1), count)
        has_second = tl.where(found, tl.sum(tl.where(hit, has_j, 0), axis=1), has_second)
        before += tl.sum(masses, axis=1)
    return first, second, count, has_second


@triton.jit
def _valid_counts(words_ptr, rows, row_mask, B, W, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per row, its number of valid partners."""
    count = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, B, BLOCK_C):
        candidates = start + tl.arange(0, BLOCK_C)
        valid = _valid_partners(words_ptr, rows, row_mask, candidates, candidates < B, W, BLOCK_R, BLOCK_C)
        count += tl.sum(valid.to(tl.int64), axis=1)
    return count


@triton.jit
def _select_partners(words_ptr, rows, row_mask, rank, weighted, first, second, has_second, B, W,
                     WEIGHTED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per row, its rank-th candidate in batch order, or the row itself: among its valid partners, or
    (WEIGHTED, where weighted) among its contrast's rows, those with label first that differ from
    the row at label second."""
    partner = rows.to(tl.int64)
    seen = tl.zeros([BLOCK_R], tl.int64)
    for start in range(0, B, BLOCK_C):
        candidates = start + tl.arange(0, BLOCK_C)
        candidate_mask = candidates < B
        chosen = _valid_partners(words_ptr, rows, row_mask, candidates, candidate_mask, W, BLOCK_R, BLOCK_C)
        if WEIGHTED:
            mask = row_mask[:, None] & candidate_mask[None, :]
            first_word = tl.load(words_ptr + candidates[None, :] * W + first[:, None] // 64, mask=mask, other=0)
            second_word = tl.load(words_ptr + candidates[None, :] * W + second[:, None] // 64, mask=mask, other=0)
            has_first = (first_word >> (first[:, None] % 64)) & 1
            has_other_second = ((second_word >> (second[:, None] % 64)) & 1) != has_second[:, None]
            chosen = tl.where(weighted[:, None], (has_first != 0) & has_other_second & mask, chosen)
        position = seen[:, None] + tl.cumsum(chosen.to(tl.int64), axis=1)  # 1-based among the chosen ones
        hit = chosen & (position == rank[:, None] + 1)
        found = tl.max(tl.where(hit, candidates[None, :], -1), axis=1)
        partner = tl.where(found >= 0, found.to(tl.int64), partner)
        seen += tl.sum(chosen.to(tl.int64), axis=1)
    return partner


@triton.jit
def _mine_pairs_kernel(words_ptr, seed_ptr, weights_ptr, co_ptr, alone_ptr, joined_ptr, totals_ptr, loads_ptr, threshold,
                       index_a_ptr, index_b_ptr, is_partial_ptr, B, c, W, WEIGHTED: tl.constexpr, CAPPED: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < B
    # Philox(seed, (0, 0, row, 0)): words 0, 1 rank the partner, words 2, 3 draw the contrast.
    zero = tl.zeros([BLOCK_R], tl.uint32)
    seed = tl.load(seed_ptr)
    lo, hi, u_lo, u_hi = tl.philox(seed, zero, zero, rows.to(tl.uint32), zero)
    uniform_rows = row_mask  # the rows that draw uniformly among their valid partners
    weighted = tl.zeros([BLOCK_R], tl.int1)
    first = rows.to(tl.int64)  # the drawn contrast (i, j), its count and whether the row has j: unread unless WEIGHTED
    second = first
    contrast_count = first
    has_second = first
    if WEIGHTED:
        total = tl.load(totals_ptr + rows, mask=row_mask, other=0)
        first, second, contrast_count, has_second = _draw_contrasts(
            words_ptr, weights_ptr, co_ptr, alone_ptr, joined_ptr, rows, row_mask, total, u_lo, u_hi, c, W,
            BLOCK_R, BLOCK_I, BLOCK_J)
        weighted = total > 0
        uniform_rows = row_mask & ~weighted

    count = tl.zeros([BLOCK_R], tl.int64)
    if tl.max(uniform_rows.to(tl.int32), axis=0) > 0:
        count = _valid_counts(words_ptr, rows, row_mask, B, W, BLOCK_R, BLOCK_C)
    is_partial = count > 0
    rank = _rank(lo, hi, count)
    if WEIGHTED:
        is_partial = is_partial | weighted
        rank = tl.where(weighted, _rank(lo, hi, contrast_count), rank)
    partner = _select_partners(words_ptr, rows, row_mask, rank, weighted, first, second, has_second, B, W,
                               WEIGHTED, BLOCK_R, BLOCK_C)
    if CAPPED:  # Philox(seed, (1, 0, row, 0)): words 0, 1 keep the partner, words 2, 3 rank its replacement
        keep_lo, keep_hi, redraw_lo, redraw_hi = tl.philox(seed, zero + 1, zero, rows.to(tl.uint32), zero)
        load = tl.load(loads_ptr + partner, mask=weighted, other=0)
        redrawn = weighted & (_mulhi64(keep_lo, keep_hi, load) >= threshold)
        if tl.max(redrawn.to(tl.int32), axis=0) > 0:
            redraw_rank = _rank(redraw_lo, redraw_hi, _valid_counts(words_ptr, rows, row_mask, B, W, BLOCK_R, BLOCK_C))
            uniform = _select_partners(words_ptr, rows, row_mask, redraw_rank, weighted, first, second, has_second, B, W,
                                       False, BLOCK_R, BLOCK_C)
            partner = tl.where(redrawn, uniform, partner)
    tl.store(index_a_ptr + rows, rows.to(tl.int64), mask=row_mask)
    tl.store(index_b_ptr + rows, partner, mask=row_mask)
    tl.store(is_partial_ptr + rows, is_partial, mask=row_mask)


def _mine(targets: torch.Tensor, seed: torch.Tensor, contrast_weights: torch.Tensor | None, load_cap: int = 0):
    B, c = targets.shape
    W = max(1, triton.cdiv(c, 64))
    labels = targets.view(torch.uint8) if targets.dtype == torch.bool else targets
    index_a = torch.empty(B, dtype=torch.int64, device=targets.device)
    index_b = torch.empty_like(index_a)
    is_partial = torch.empty(B, dtype=torch.bool, device=targets.device)
    if B == 0:
        return index_a, index_b, is_partial
    words = torch.empty((B, W), dtype=torch.int64, device=targets.device)
    _pack_labels_kernel[(triton.cdiv(B, _PACK_ROWS), W)](
        labels, words, B, c, W, labels.stride(0), labels.stride(1), BLOCK_B=_PACK_ROWS)
    weights = co = alone = joined = totals = loads = words  # unread by mine_pairs
    threshold = 0
    contrast_labels = {"BLOCK_I": _CONTRAST_LABELS[0], "BLOCK_J": _CONTRAST_LABELS[1]}
    row_blocks = (triton.cdiv(B, _ROWS),)
    if contrast_weights is not None:
        weights = contrast_weights.contiguous()
        co = torch.zeros((c, c), dtype=torch.int64, device=targets.device)
        alone = torch.zeros(c, dtype=torch.int64, device=targets.device)
        joined = torch.zeros_like(co)
        totals = torch.empty(B, dtype=torch.int64, device=targets.device)
        tiles = triton.cdiv(c, _TABLE_LABELS)
        if c:
            _co_counts_kernel[(tiles, tiles)](words, co, B, c, W, BLOCK_L=_TABLE_LABELS, BLOCK_B=_CO_ROWS)
            _contrast_tables_kernel[(tiles,)](weights, co, alone, joined, c, BLOCK_L=_TABLE_LABELS)
        _row_totals_kernel[row_blocks](words, alone, joined, totals, B, c, W, BLOCK_R=_ROWS, **contrast_labels)
        if load_cap > 0:  # R, its tables, the rows' loads
            scale = 63 - B.bit_length()
            threshold = min(load_cap, B) << scale
            shares = torch.zeros((c, c), dtype=torch.int64, device=targets.device)
            load_alone, load_joined = torch.zeros_like(alone), torch.zeros_like(joined)
            loads = torch.empty(B, dtype=torch.int64, device=targets.device)
            if c:
                _load_shares_kernel[(tiles, tiles)](words, totals, shares, B, c, W, scale, BLOCK_L=_TABLE_LABELS, BLOCK_B=_CO_ROWS)
                _contrast_tables_kernel[(tiles,)](weights, shares, load_alone, load_joined, c, BLOCK_L=_TABLE_LABELS)
            _row_totals_kernel[row_blocks](words, load_alone, load_joined, loads, B, c, W, BLOCK_R=_ROWS, **contrast_labels)
    _mine_pairs_kernel[row_blocks](
        words, seed, weights, co, alone, joined, totals, loads, threshold, index_a, index_b, is_partial, B, c, W,
        WEIGHTED=contrast_weights is not None, CAPPED=threshold > 0, BLOCK_R=_ROWS, BLOCK_C=_CANDIDATES,
        **contrast_labels)
    return index_a, index_b, is_partial


def mine_pairs(targets: torch.Tensor, seed: torch.Tensor):
    """(index_a, index_b, is_partial) of checked inputs: targets (B, c), seed one int64 on their device."""
    return _mine(targets, seed, None)


def mine_pairs_cooccur(targets: torch.Tensor, seed: torch.Tensor, contrast_weights: torch.Tensor, load_cap: int):
    """mine_pairs_cooccur of checked inputs: mine_pairs', contrast_weights (c, c) int64 in [0, 2^16], load_cap >= 0."""
    return _mine(targets, seed, contrast_weights, load_cap)
