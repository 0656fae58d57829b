"""Pair mining for INDeeD: for each sample a, a partner b that shares a label with a
and has a different label set (ya ∩ yb ≠ ∅ and ya ≠ yb, with y = targets > 0.5).

"any" is one op, ``torch.ops.indeed.mine_pairs`` (CPU and CUDA C++, Triton, and the
B×B spec ``reference.mine_pairs``): static shapes, no host sync, and its random numbers
come from a seed tensor drawn with torch's generator and a counter-based generator
(Philox) inside the kernel, so a CUDA graph captures it. Same generator state, same
pairs, on every backend.

"cooccur" is the op ``torch.ops.indeed.mine_pairs_cooccur`` with the same contract: each
valid partner b of a is drawn with a weight, the sum of contrast_weights[i, j] over the labels i
the pair shares and the labels j that separate it, so that pairs contrast labels that co-occur.
``CooccurrenceStatistic`` learns those weights from the labels it sees; where labels co-occur no
more than chance they are 0 and the pairs are exactly the "any" pairs. A load cap keeps the draw
from collapsing onto a few rows (the images without a hub label that nearly every image holds):
a row's load is how many weighted draws of the batch pick it in expectation, and a weighted
partner of load L is kept with probability min(1, load_cap / L), else replaced by a uniform one.

"matching" runs Python rounds on the targets' device with batched tensor ops; the
rounds' sizes are read on the host, so it syncs and cannot be graph-captured. Its
rounds draw a uniform valid partner among a subset of the batch without a B×B matrix:

1. Whether a has any valid partner at all is exact and cheap: every candidate with
   a's label set also carries each label k of a, so a valid partner exists iff some
   label k of a has more carriers than a's label set has members.
2. Each row makes ``_DRAWS`` independent proposals of two kinds and keeps the first
   one accepted: (i) b uniform among the candidates, accepted when valid; (ii) a slot
   uniform among a's (label k, carrier of k) slots, accepted when valid and k is the
   lowest label a and b share, so every valid b has exactly one accepting slot.
   Conditioned on acceptance, each proposal is uniform over a's valid partners and
   independent of the others, so the first accepted one is uniform too. Uniform
   proposals do well when most of the batch is valid (many labels per image), slot
   proposals when few samples are (rare labels).
3. The rows that have a valid partner but accepted none of their proposals (none to
   a few percent for the label statistics we tried) draw exactly: their overlap rows
   by one matmul, random keys masked to valid partners, argmax. A uniform draw either
   way, so the result stays uniform and independent across rows.

"matching" builds a maximal randomized matching from the same sampler: in each round
a fair coin splits the unmatched samples into proposers and acceptors, every proposer
draws a uniform valid partner among the acceptors, and each acceptor takes one of its
proposers at random. Samples with no valid partner left among the unmatched ones are
dropped from later rounds (validity is symmetric), and end paired with themselves.
Each round matches at least one pair with probability >= 1/2 while a valid pair is
left, and in practice a constant fraction of the samples, so the number of rounds
grows like log B.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.distributed as dist
from torch import nn

from . import _checks, ops, reference

STRATEGIES = ("any", "matching", "cooccur")
COOCCURRENCE_STATISTICS = ("lift", "excess")  # the first is the default

_DRAWS = 4  # proposals of each kind per row before the exact fallback
_FALLBACK_ELEMENTS = 1 << 22  # rows x candidates per chunk of the exact fallback
# (1 << b) - 1 for a label at bit b of its word: the bits of the labels below it.
_LOW_BITS = torch.tensor([(1 << b) - 1 for b in range(64)], dtype=torch.int64)


class _LabelSets:
    """Binary labels of some samples of a batch.

    labels: bool (m, c). words: the labels packed into int64 words, word-major (W, m):
    label k is bit k % 64 of words[k // 64]. index: the rows' batch positions. set_ids:
    the batch's distinct label sets numbered 0..num_sets-1. entries: the (row, label)
    positions of the positive labels, row-major.
    """

    def __init__(self, index, labels, words, set_ids, num_sets):
        self.index, self.labels, self.words = index, labels, words
        self.set_ids, self.num_sets = set_ids, num_sets
        self._entries = None

    @classmethod
    def of_batch(cls, targets: torch.Tensor) -> "_LabelSets":
        labels = (targets if targets.dtype == torch.bool else targets > 0.5).contiguous()
        B, c = labels.shape
        num_words = max(1, -(-c // 64))
        # Bytes by one small matmul (sums of distinct powers of two below 256 are exact in
        # float32), then eight bytes per int64 word.
        label = torch.arange(c, device=labels.device)
        byte_weights = torch.zeros((c, num_words * 8), device=labels.device)
        byte_weights[label, label // 8] = torch.exp2((label % 8).float())
        packed = (labels.to(torch.float32) @ byte_weights).to(torch.uint8).view(B, num_words, 8)
        if sys.byteorder == "big":
            packed = packed.flip(-1)
        words = packed.contiguous().view(torch.int64).view(B, num_words).T.contiguous()
        # Label-set id per sample: rows with equal words get equal ids (one 1-D unique per word).
        distinct, set_ids = torch.unique(words[0], sorted=False, return_inverse=True)
        for word in words[1:]:
            word_ids = torch.unique(word, sorted=False, return_inverse=True)[1]
            distinct, set_ids = torch.unique(set_ids * B + word_ids, sorted=False, return_inverse=True)
        return cls(torch.arange(B, device=labels.device), labels, words, set_ids, distinct.shape[0])

    def subset(self, index: torch.Tensor) -> "_LabelSets":
        rows = (self.index, self.labels, self.set_ids)
        index_, labels, set_ids = (t.index_select(0, index) for t in rows)
        return _LabelSets(index_, labels, self.words.index_select(1, index), set_ids, self.num_sets)

    @property
    def entries(self):
        if self._entries is None:
            self._entries = self.labels.nonzero().unbind(1)
        return self._entries


class _Candidates:
    """The samples partners are drawn from, with the carriers of each label grouped by label."""

    def __init__(self, sets: _LabelSets):
        self.sets = sets
        label, holder = sets.labels.T.nonzero().unbind(1)  # grouped by label
        self.label_counts = torch.bincount(label, minlength=sets.labels.shape[1])  # (c,)
        self.carriers = sets.index.index_select(0, holder)  # batch positions
        self.carrier_start = torch.cumsum(self.label_counts, 0) - self.label_counts
        self.set_sizes = torch.bincount(sets.set_ids, minlength=sets.num_sets)  # candidates per label set

    def take(self, fraction: torch.Tensor) -> torch.Tensor:
        """The candidate at a fraction in [0, 1) of the candidate list."""
        count = self.sets.index.shape[0]
        return self.sets.index.take((fraction * count).long().clamp_max(count - 1))


def _has_valid_partner(rows: _LabelSets, candidates: _Candidates) -> torch.Tensor:
    """Per row: does some candidate share a label with it and differ in label set?

    Every candidate with the row's label set carries each of the row's labels, so a
    valid partner exists iff the row's most carried label has more carriers than that.
    """
    entry_row, entry_label = rows.entries
    carried = candidates.label_counts.index_select(0, entry_label)
    most_carried = torch.zeros_like(rows.set_ids).scatter_reduce_(0, entry_row, carried, "amax")
    return most_carried > candidates.set_sizes.index_select(0, rows.set_ids)


def _uniform(shape, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _propose(rows: _LabelSets, candidates: _Candidates, generator):
    """_DRAWS uniform and _DRAWS label-slot proposals per row: (proposals (m, 2D), slot labels (m, D))."""
    device = rows.index.device
    m = rows.index.shape[0]
    uniform_proposals = candidates.take(_uniform((m, _DRAWS), generator, device))

    # A row's slots are its (label k, carrier of k) pairs, label by label; a uniform slot
    # offset finds its label by comparing with the row's running slot counts, kept in a
    # (rows, most labels of a row) table.
    entry_row, entry_label = rows.entries
    labels_per_row = torch.bincount(entry_row, minlength=m)
    first_entry = torch.cumsum(labels_per_row, 0) - labels_per_row
    entry_slots = candidates.label_counts.index_select(0, entry_label)
    num_slots = torch.zeros(m, dtype=torch.int64, device=device).index_add_(0, entry_row, entry_slots)
    row_base = torch.cumsum(num_slots, 0) - num_slots
    max_labels = int(labels_per_row.max())
    slot_ends = torch.full((m, max_labels), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    entry_column = torch.arange(entry_row.shape[0], device=device) - first_entry.index_select(0, entry_row)
    slot_ends[entry_row, entry_column] = torch.cumsum(entry_slots, 0) - row_base.index_select(0, entry_row)
    offset = (_uniform((m, _DRAWS), generator, device) * num_slots[:, None]).long()
    offset = torch.minimum(offset, (num_slots[:, None] - 1).clamp_min(0))
    # Rows without slots (masked out by the caller) must still index in range: the clamps.
    column = (offset[:, :, None] >= slot_ends[:, None, :]).sum(-1).clamp_max(max_labels - 1)
    label = entry_label.take((first_entry[:, None] + column).clamp_max(entry_label.shape[0] - 1))
    position = offset - (slot_ends.gather(1, column) - candidates.label_counts.take(label))
    carrier = (candidates.carrier_start.take(label) + position).clamp(0, candidates.carriers.shape[0] - 1)
    return torch.cat((uniform_proposals, candidates.carriers.take(carrier)), 1), label


def _accept(rows: _LabelSets, batch: _LabelSets, proposals, slot_labels):
    """(m, 2D) bool: valid partner, and for slot proposals the slot's label is the lowest shared one."""
    slot_word = slot_labels // 64
    low_bits = _LOW_BITS.to(proposals.device).take(slot_labels % 64)  # the slot word's bits below the label
    m = proposals.shape[0]
    differs = torch.zeros((m, 2 * _DRAWS), dtype=torch.bool, device=proposals.device)
    shares = torch.zeros((m, _DRAWS), dtype=torch.bool, device=proposals.device)
    lower_shared = torch.zeros_like(shares)
    for w in range(batch.words.shape[0]):  # W = ceil(c / 64) words, one for c <= 64
        word_a = rows.words[w][:, None]
        word_b = batch.words[w].take(proposals)
        shared = word_a & word_b
        # Labels below the slot label: all of a lower word, the low bits of the slot's word.
        below = torch.where(slot_word > w, -1, torch.where(slot_word == w, low_bits, 0))
        differs |= word_a != word_b
        shares |= shared[:, :_DRAWS] != 0
        lower_shared |= (shared[:, _DRAWS:] & below) != 0
    return torch.cat((shares, ~lower_shared), 1) & differs


def _exact_partners(rows: _LabelSets, candidates: _Candidates, generator):
    """A uniform valid partner per row (each row must have one): masked random keys, argmax."""
    pool = candidates.sets
    pool_labels = pool.labels.to(torch.float32)
    partners = []
    chunk = max(1, _FALLBACK_ELEMENTS // pool.index.shape[0])
    for labels, set_ids in zip(rows.labels.split(chunk), rows.set_ids.split(chunk)):
        overlap = labels.to(torch.float32) @ pool_labels.T
        valid = (overlap > 0) & (set_ids[:, None] != pool.set_ids[None, :])
        keys = _uniform(valid.shape, generator, valid.device).masked_fill_(~valid, -1.0)
        partners.append(pool.index.take(keys.argmax(1)))
    return torch.cat(partners)


def _draw_partners(batch: _LabelSets, rows: _LabelSets, candidates: _Candidates, generator):
    """Batch positions of a uniform valid partner among the candidates for each row, or the row itself."""
    has_valid = _has_valid_partner(rows, candidates)
    partners = rows.index.clone()
    if not bool(has_valid.any()):  # from here on, some row has labels and some candidate too
        return partners
    proposals, slot_labels = _propose(rows, candidates, generator)
    accepted = _accept(rows, batch, proposals, slot_labels) & has_valid[:, None]
    # Any choice among the accepted proposals that depends only on which were accepted
    # keeps the result uniform; max returns the first one.
    found, chosen = accepted.to(torch.uint8).max(1, keepdim=True)
    found = found.squeeze(1).bool()
    partners = torch.where(found, proposals.gather(1, chosen).squeeze(1), partners)
    unlucky = (has_valid & ~found).nonzero().squeeze(1)
    if unlucky.shape[0]:
        partners[unlucky] = _exact_partners(rows.subset(unlucky), candidates, generator)
    return partners


def _matching(batch: _LabelSets, generator):
    B = batch.labels.shape[0]
    device = batch.labels.device
    active = torch.ones(B, dtype=torch.bool, device=device)  # unmatched and still has a valid partner
    matched_a, matched_b = [], []
    while True:
        active &= _has_valid_partner(batch, _Candidates(batch.subset(active.nonzero().squeeze(1))))
        if not bool(active.any()):
            break
        proposing = _uniform((B,), generator, device) < 0.5
        proposers = batch.subset((active & proposing).nonzero().squeeze(1))
        acceptors = _Candidates(batch.subset((active & ~proposing).nonzero().squeeze(1)))
        partners = _draw_partners(batch, proposers, acceptors, generator)
        real = partners != proposers.index
        proposed_by, partners = proposers.index[real], partners[real]
        # Each acceptor takes the proposer with the highest random rank (ranks are distinct).
        rank = torch.randperm(partners.shape[0], generator=generator, device=device)
        best = torch.full((B,), -1, dtype=torch.int64, device=device).scatter_reduce(0, partners, rank, "amax")
        won = best[partners] == rank
        matched_a.append(proposed_by[won])
        matched_b.append(partners[won])
        active[proposed_by[won]] = False
        active[partners[won]] = False
    no_pairs = batch.index.new_empty(0)
    index_a, index_b = torch.cat([no_pairs] + matched_a), torch.cat([no_pairs] + matched_b)
    is_matched = torch.zeros(B, dtype=torch.bool, device=device)
    is_matched[index_a] = True
    is_matched[index_b] = True
    leftovers = (~is_matched).nonzero().squeeze(1)
    index_a, index_b = torch.minimum(index_a, index_b), torch.maximum(index_a, index_b)
    index_a = torch.cat((index_a, leftovers))
    index_b = torch.cat((index_b, leftovers))
    order = torch.argsort(index_a)
    index_a, index_b = index_a[order], index_b[order]
    return index_a, index_b, index_a != index_b


# INDeeDLoss's steps between two computations of the co-occurrence weights (CooccurrenceStatistic.weights).
DEFAULT_COOCCUR_REFRESH = 16


class CooccurrenceStatistic(nn.Module):
    """Running label co-occurrence counts, and the contrast weights of strategy "cooccur".

    Buffers (in the state_dict): counts (c, c) float64, counts[i, j] = the samples seen with
    labels i and j (the diagonal: n_i, the samples with i), and samples, all samples seen.
    ``update`` adds a batch's targets; ``seed_from_labels`` a data set's labels, for users who
    know them; ``reset`` forgets. The buffers follow the targets to their device.

    contrast_weights()[i, j] weighs "i shared, j separates": with p_ij = P(j | i) = counts[i, j] / n_i
    and a null rate p0, S = d = p_ij - p0 where d passes a one-sided binomial test,
    d > z * sqrt(p0 (1 - p0) / n_i), else 0; quantised to round(S * 2^16).

    - "lift" (default): p0 = P(j) = n_j / samples, independence. It sees partner groups and a hub
      tied to some classes (P(hub | i) above P(hub)); a hub that joins every class at one rate is
      a prior, not a context (P(hub | i) = P(hub)), and gets no weight, so its pairs are "any"'s.
    - "excess": p0 = i's mean co-label rate, the mean of p_ij over j != i. It also weighs such a hub
      (which made "cooccur" collapse onto the hub-less images) and, with unequal class frequencies,
      every frequent class against all others (docs/EXPERIMENTS.md, 'The statistic').

    Labels that co-occur no more than chance give weights 0 up to z-sigma noise, and then
    "cooccur" draws the "any" pairs. Under torch.distributed with several processes ``update``
    all-reduces (sums) each batch's counts, so every process holds the same statistic; set
    ``sync = False`` where every process already sees the same targets (recipes' GlobalPairsLoss).
    """

    def __init__(self, num_classes: int, statistic: str = COOCCURRENCE_STATISTICS[0], z: float = 3.0, refresh: int = 1):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if statistic not in COOCCURRENCE_STATISTICS:
            raise ValueError(f"unknown co-occurrence statistic {statistic!r}; expected one of {COOCCURRENCE_STATISTICS}")
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z < 0:
            raise ValueError(f"z must be a finite number >= 0, got {z!r}")
        if isinstance(refresh, bool) or not isinstance(refresh, int) or refresh < 1:
            raise ValueError(f"refresh must be an int >= 1, got {refresh!r}")
        self.num_classes, self.statistic, self.z, self.refresh = num_classes, statistic, float(z), refresh
        self.sync = True
        self.register_buffer("counts", torch.zeros((num_classes, num_classes), dtype=torch.float64))
        self.register_buffer("samples", torch.zeros((), dtype=torch.float64))
        self._forget_weights()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, statistic={self.statistic!r}, z={self.z}, refresh={self.refresh}, "
                f"sync={self.sync}")

    def _forget_weights(self) -> None:
        self._weights, self._updates_since = None, 0  # see weights()

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(): the cached weights move with the buffers
        if self._weights is not None:
            self._weights = fn(self._weights)
        return super()._apply(fn, *args, **kwargs)

    def get_extra_state(self) -> dict:
        """The cached weights and their age, in the state_dict: a resumed run mines the pairs an unbroken one would."""
        return {"weights": self._weights, "updates_since": self._updates_since}

    def set_extra_state(self, state: dict) -> None:
        weights = state["weights"]
        self._weights = None if weights is None else weights.to(self.counts.device)
        self._updates_since = state["updates_since"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state_dict from before the cache (2026-12-07) has no extra state: recompute at the next call.
        state_dict.setdefault(prefix + "_extra_state", {"weights": None, "updates_since": 0})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _labels(self, name: str, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or targets.shape[1] != self.num_classes:
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"{name} must be (N, num_classes) = (N, {self.num_classes}), got {shape}")
        if targets.dtype == torch.bool:
            return targets.to(torch.float64)
        # Rounding half to even, clamped, is "> 0.5" on finite values, in 4 aten ops fewer than a comparison
        # with a Python scalar (which wraps it in a tensor): the eager step's dispatch count is pinned.
        return targets.detach().round().clamp_(0, 1).to(torch.float64)

    def follow(self, device: torch.device) -> None:
        """Moves the buffers to device unless they are there."""
        if self.counts.device != device:
            self.to(device)

    @torch.no_grad()
    def update(self, targets: torch.Tensor) -> None:
        """Adds the (B, c) targets' labels (> 0.5, or bool), summed over the processes when synced."""
        labels = self._labels("targets", targets)
        self.follow(labels.device)
        co_counts = torch.mm(labels.t(), labels)
        if self.sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            increment = torch.cat((co_counts.flatten(), labels.new_full((1,), labels.shape[0])))
            dist.all_reduce(increment)
            self.counts += increment[:-1].view_as(co_counts)
            self.samples += increment[-1]
        else:
            self.counts += co_counts
            self.samples += float(labels.shape[0])  # a float: an int would add a cast
        if not torch.compiler.is_compiling():  # a Python counter would recompile the graph at every step
            self._updates_since += 1

    @torch.no_grad()
    def seed_from_labels(self, labels: torch.Tensor, chunk: int = 1 << 16) -> None:
        """Adds a data set's (N, c) labels, in chunks of rows; never all-reduced: give every process all of them."""
        for part in self._labels("labels", labels).split(chunk):
            part = part.to(self.counts.device)
            self.counts += torch.mm(part.t(), part)
        self.samples += labels.shape[0]
        self._forget_weights()

    @torch.no_grad()
    def reset(self) -> None:
        self.counts.zero_()
        self.samples.zero_()
        self._forget_weights()

    def weights(self) -> torch.Tensor:
        """contrast_weights() as computed at most refresh - 1 updates ago: recomputed at the first call,
        once refresh updates have passed since, and after seed_from_labels, reset, or loading a state_dict
        without them (the cache and its age are in the state_dict). refresh = 1 is always current. Why:
        the weights are ~45 small aten ops, a third of an eager step's dispatches, and a statistic of
        thousands of samples moves little in a few batches. Under torch.compile they are recomputed at
        every call (fused into the graph, they cost no dispatch)."""
        if torch.compiler.is_compiling():
            return self.contrast_weights()
        if self._weights is None or self._updates_since >= self.refresh:
            self._weights, self._updates_since = self.contrast_weights(), 0
        return self._weights

    def contrast_weights(self) -> torch.Tensor:
        """(c, c) int64 in [0, 2^16]: round(S * 2^16), S[i, j] the weight of "i shared, j separates"
        (0 on the diagonal). Tensor ops only: no host sync."""
        n = self.counts.diagonal()
        seen = n.clamp_min(1).unsqueeze(1)
        p = self.counts / seen  # P(j | i); 0 in the rows of unseen labels, whose excess is then <= 0
        if self.statistic == "excess":
            null = (p.sum(1, keepdim=True) - p.diagonal().unsqueeze(1)) / max(self.num_classes - 1, 1)
        else:
            null = n / self.samples.clamp_min(1)  # P(j), along the rows
        excess = p - null
        threshold = (null * (1 - null) / seen).sqrt_().mul_(self.z)
        weights = excess.masked_fill_(excess <= threshold, 0).mul_(_checks.CONTRAST_SCALE).round_().to(torch.int64)
        return weights.fill_diagonal_(0)


def mine_pairs(
    targets: torch.Tensor,
    strategy: str = "any",
    generator: torch.Generator | None = None,
    backend: str = "auto",
    contrast_weights: torch.Tensor | None = None,
    load_cap: int = reference.DEFAULT_LOAD_CAP,
):
    """Pairs (index_a, index_b, is_partial) for the INDeeD loss.

    targets: (B, c) labels (bool, or float with positives > 0.5) on any device.
    A valid partner b of a shares a label with a and has a different label set.

    - "any": P = B pairs, index_a = arange(B); each a gets a partner drawn uniformly
      among its valid partners, independently of the other rows, or itself when it has
      none. One op (torch.ops.indeed.mine_pairs, chosen by backend as in
      indeed_ext.ops): no host sync, CUDA-graph capturable.
    - "cooccur": as "any", but a's partner b is drawn with probability w(a, b) / W_a, w(a, b) =
      the sum of contrast_weights[i, j] over the labels i in ya & yb and j in ya ^ yb, W_a = the
      sum over b; "any"'s draw where W_a = 0. contrast_weights: (c, c) int64 in [0, 2^16] on the
      targets' device (CooccurrenceStatistic.contrast_weights()). load_cap (default 4; 0: none):
      a weighted partner b is kept with probability min(1, load_cap / load(b)), load(b) = the sum
      over a of w(a, b) / W_a, else replaced by a uniform valid partner (docs/SPEC.md). One op,
      torch.ops.indeed.mine_pairs_cooccur; values are checked on the CPU only (no host sync).
    - "matching": disjoint pairs (each sample in exactly one pair), a maximal random
      matching of the valid-partner graph (see the module docstring); the samples left
      over are paired with themselves. Pairs are sorted by index_a, and index_a <= index_b.
      Python rounds whose sizes are read on the host: not graph-capturable; backend is unused.

    is_partial (P,) bool is True for a real partner and False for a self-pair (b = a).
    generator: a torch.Generator on the targets' device (or None for the global RNG).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown pair strategy {strategy!r}; expected one of {STRATEGIES}")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a 2-D (B, c) tensor, got {shape}")
    if generator is not None and generator.device.type != targets.device.type:
        raise ValueError(
            f"generator is on {generator.device} but targets are on {targets.device}; "
            f"pass torch.Generator(device=targets.device)"
        )
    if (contrast_weights is None) != (strategy != "cooccur"):
        raise ValueError(
            "strategy='cooccur' needs contrast_weights, a (c, c) int64 tensor such as "
            "CooccurrenceStatistic.contrast_weights()" if strategy == "cooccur"
            else f"contrast_weights are used by strategy='cooccur' only, not {strategy!r}"
        )
    if strategy != "cooccur" and load_cap != reference.DEFAULT_LOAD_CAP:
        raise ValueError(f"load_cap is a setting of strategy='cooccur', not {strategy!r}")
    if strategy in ("any", "cooccur"):
        # The op's randomness: one int64 drawn on the device (a graph replays the draw).
        seed = torch.randint(-(2**63), 2**63 - 1, (), generator=generator, device=targets.device)
        if strategy == "any":
            _checks.check_mine_pairs(targets, seed)
            return ops.resolve_backend(backend, targets.device, "mine_pairs").mine_pairs(targets, seed)
        op = ops.resolve_backend(backend, targets.device, "mine_pairs_cooccur")
        # The CPU kernels read the weights anyway and check their values; the reference does not.
        check_values = op is reference and targets.device.type == "cpu" and not torch.compiler.is_compiling()
        _checks.check_mine_pairs_cooccur(targets, seed, contrast_weights, load_cap, check_weight_values=check_values)
        return op.mine_pairs_cooccur(targets, seed, contrast_weights, load_cap)
    with torch.no_grad():
        return _matching(_LabelSets.of_batch(targets.detach()), generator)
