"""Co-occurring label sets for the composite training canvases (indeed-train --cooccur SPEC).

SPEC is STRUCTURE:RHO, with the strength RHO in [0, 1]:

- ``pairs:RHO``: the classes in consecutive pairs (0, 1), (2, 3), ... (with an odd number of
  classes the last one has no partner);
- ``groups=G:RHO``: consecutive groups of G classes (the last one may be smaller);
- ``groups=0+1,2+3+4:RHO``: explicit disjoint groups; a class in none has no partner;
- ``hub:RHO``, ``hub=K:RHO``: one hub class, 0 unless given, like COCO's "person".

Partner groups: the N labels are drawn one at a time, uniformly among the classes not yet drawn
(a "free" draw); after each free draw, each group-mate of the drawn class that is still absent
joins with probability RHO (mates in random order, while there is room). So the first drawn
class brings its mate with probability RHO, and with N = 2 and pairs of c classes,
P(mate | k) = RHO + (1 − RHO) / (c − 1); larger N adds chance co-occurrence (README).

Hub: with probability RHO an image holds the hub and N − 1 classes drawn uniformly from the
others, else N classes drawn uniformly. So P(hub) = RHO + (1 − RHO) N / c and, for k ≠ hub,
P(hub | k) = (N − 1)(RHO c + (1 − RHO) N) / (RHO c (N − 1) + (1 − RHO) N (c − 1)).

RHO = 0 draws exactly the uniform sets of a run without --cooccur (the same random numbers).

A structure also defines each class's context, the classes it co-occurs with: its group-mates,
or {hub} for every class but the hub (whose context is empty). indeed_ext.metrics.context_score
measures how much probability a model gives to the context of the object it is shown.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

STRUCTURES = ("pairs", "groups", "hub")
SYNTAX = "pairs:RHO, groups=G:RHO, groups=0+1,2+3+4:RHO, hub:RHO or hub=K:RHO (RHO in [0, 1])"
_GROUP_LIST = re.compile(r"\d+(\+\d+)+(,\d+(\+\d+)+)*")


@dataclass(frozen=True)
class CooccurSpec:
    """A parsed SPEC, before it meets a number of classes: ``structure`` ("pairs", "groups" or
    "hub"), ``group_size`` (pairs: 2) or ``groups`` (explicit), ``hub`` and ``rho``."""

    structure: str
    rho: float
    group_size: int | None = None
    groups: tuple[tuple[int, ...], ...] | None = None
    hub: int = 0

    @classmethod
    def parse(cls, text: str) -> "CooccurSpec":
        structure, colon, rho_text = str(text).strip().rpartition(":")
        if not colon:
            raise ValueError(f"co-occurrence spec {text!r} has no strength: expected {SYNTAX}")
        try:
            rho = float(rho_text)
        except ValueError:
            raise ValueError(f"co-occurrence spec {text!r}: strength {rho_text!r} is not a number") from None
        if not (math.isfinite(rho) and 0.0 <= rho <= 1.0):
            raise ValueError(f"co-occurrence spec {text!r}: strength must be in [0, 1], got {rho_text}")
        rho += 0.0  # -0.0 -> 0.0
        name, equals, argument = structure.partition("=")
        if name == "pairs" and not equals:
            return cls("pairs", rho, group_size=2)
        if name == "hub":
            if not equals:
                return cls("hub", rho)
            if argument.isdigit():
                return cls("hub", rho, hub=int(argument))
            raise ValueError(f"co-occurrence spec {text!r}: the hub must be a class index, got {argument!r}")
        if name == "groups" and equals:
            if argument.isdigit():
                if int(argument) < 2:
                    raise ValueError(f"co-occurrence spec {text!r}: groups need at least 2 classes, got {argument}")
                return cls("groups", rho, group_size=int(argument))
            if _GROUP_LIST.fullmatch(argument):
                groups = tuple(tuple(int(k) for k in group.split("+")) for group in argument.split(","))
                named = [k for group in groups for k in group]
                if len(set(named)) != len(named):
                    raise ValueError(f"co-occurrence spec {text!r}: groups must be disjoint, a class is named twice")
                return cls("groups", rho, groups=groups)
            raise ValueError(f"co-occurrence spec {text!r}: groups= takes a size G or classes like 0+1,2+3+4, got {argument!r}")
        raise ValueError(f"unknown co-occurrence spec {text!r}; expected {SYNTAX}")

    def __str__(self) -> str:
        """The canonical text (parse(str(spec)) == spec)."""
        rho = repr(self.rho).removesuffix(".0")
        if self.structure == "hub":
            return f"hub:{rho}" if self.hub == 0 else f"hub={self.hub}:{rho}"
        if self.groups is not None:
            return "groups=" + ",".join("+".join(map(str, group)) for group in self.groups) + f":{rho}"
        return f"pairs:{rho}" if self.structure == "pairs" else f"groups={self.group_size}:{rho}"

    def with_rho(self, rho: float) -> "CooccurSpec":
        """The same structure at another strength (rho = 0: its no-bias level)."""
        return CooccurSpec.parse(f"{str(self).rpartition(':')[0]}:{rho!r}")

    def resolve(self, num_classes: int) -> "Cooccurrence":
        return Cooccurrence(self, num_classes)


def canonical_spec(text: str) -> str:
    """argparse type of --cooccur: the canonical text of a valid SPEC (a ValueError names the problem)."""
    return str(CooccurSpec.parse(text))


class Cooccurrence:
    """A spec over ``num_classes`` classes: draws label sets (``sample``) and gives each class's context."""

    def __init__(self, spec: CooccurSpec, num_classes: int):
        if num_classes < 2:
            raise ValueError(f"co-occurrence {spec} needs at least 2 classes, got {num_classes}")
        self.spec, self.rho, self.num_classes = spec, spec.rho, num_classes
        self.hub = None
        if spec.structure == "hub":
            if spec.hub >= num_classes:
                raise ValueError(f"co-occurrence {spec}: hub {spec.hub} is not one of the {num_classes} classes")
            self.hub = spec.hub
            self.context = tuple(() if k == self.hub else (self.hub,) for k in range(num_classes))
            return
        if spec.groups is not None:
            outside = [k for group in spec.groups for k in group if k >= num_classes]
            if outside:
                raise ValueError(f"co-occurrence {spec}: class {outside[0]} is not one of the {num_classes} classes")
            groups = spec.groups
        else:
            if spec.group_size > num_classes:
                raise ValueError(f"co-occurrence {spec}: groups of {spec.group_size} need as many classes, got {num_classes}")
            groups = tuple(tuple(range(start, min(start + spec.group_size, num_classes))) for start in range(0, num_classes, spec.group_size))
        mates = [()] * num_classes
        for group in groups:
            for k in group:
                mates[k] = tuple(j for j in group if j != k)
        self.context = tuple(mates)

    def context_matrix(self) -> torch.Tensor:
        """(c, c) bool: row k marks the context of class k."""
        matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.bool)
        for k, context in enumerate(self.context):
            matrix[k, list(context)] = True
        return matrix

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n distinct labels (int64, in draw order) from the generator."""
        c = self.num_classes
        if self.rho == 0.0:  # exactly the draws of the uniform sets
            return rng.choice(c, n, replace=False)
        if self.hub is not None:
            if rng.random() < self.rho:
                others = rng.choice(c - 1, n - 1, replace=False)
                return np.concatenate(([self.hub], others + (others >= self.hub))).astype(np.int64)
            return rng.choice(c, n, replace=False)
        labels: list[int] = []
        absent = np.ones(c, dtype=bool)
        while len(labels) < n:
            drawn = int(rng.choice(np.flatnonzero(absent)))
            labels.append(drawn)
            absent[drawn] = False
            for mate in rng.permutation([j for j in self.context[drawn] if absent[j]]).tolist():
                if len(labels) == n:
                    break
                if rng.random() < self.rho:
                    labels.append(mate)
                    absent[mate] = False
        return np.array(labels, dtype=np.int64)
