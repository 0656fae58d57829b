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

Mixtures, like COCO's label sets: components joined by ``&`` share the one RHO, e.g.
``groups=4+5,6+7&hub=0@1+2+3&tail=1:0.9``. At most one grouping (pairs or groups), one hub and
one tail:

- ``hub=K@1+2+3``: a hub tied to some classes (as person is to skis, not to microwaves): after a
  free draw of a tied class the hub joins with probability RHO; a hub without ``@`` joins any
  image with probability RHO, as ``hub:RHO`` does;
- ``tail=T``: unequal class frequencies, a long tail: each free draw picks an absent class k with
  probability proportional to (k + 1)^(−T) (class 0 the most frequent; T = 0 uniform).

A mixture draws the plain hub first (probability RHO), then free draws, each followed by its
group-mates (probability RHO each, as above) and then, for a tied class, the hub, while there is
room. At RHO = 0 only the tail remains; ``tail=0`` and RHO = 0 draw today's uniform sets.

RHO = 0 draws exactly the uniform sets of a run without --cooccur (the same random numbers).

A structure also defines each class's context, the classes it co-occurs with: its group-mates,
and {hub} for every class the hub joins (all but the hub itself, or the tied ones). indeed_ext.metrics.context_score
measures how much probability a model gives to the context of the object it is shown.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

STRUCTURES = ("pairs", "groups", "hub", "mix")
SYNTAX = ("pairs:RHO, groups=G:RHO, groups=0+1,2+3+4:RHO, hub:RHO or hub=K:RHO (RHO in [0, 1]), or a mixture of "
          "one grouping, one hub (hub=K@1+2+3: tied to classes 1, 2, 3) and tail=T joined by &, e.g. groups=4+5&hub=0@1+2&tail=1:0.9")
_GROUP_LIST = re.compile(r"\d+(\+\d+)+(,\d+(\+\d+)+)*")
_TIES = re.compile(r"\d+(\+\d+)*")


@dataclass(frozen=True)
class CooccurSpec:
    """A parsed SPEC, before it meets a number of classes: ``structure`` ("pairs", "groups", "hub" or
    "mix"), ``group_size`` (pairs: 2) or ``groups`` (explicit), ``hub`` (None: a mixture without one),
    ``ties`` (a mixture's tied hub: the classes it is tied to), ``tail`` and ``rho``."""

    structure: str
    rho: float
    group_size: int | None = None
    groups: tuple[tuple[int, ...], ...] | None = None
    hub: int | None = 0
    ties: tuple[int, ...] | None = None
    tail: float = 0.0

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
        if "&" in structure:
            return cls._mixture(text, structure.split("&"), rho)
        return cls._component(text, structure, rho)

    @classmethod
    def _mixture(cls, text: str, parts: list[str], rho: float) -> "CooccurSpec":
        fields = {"hub": None}
        for part in parts:
            if part.startswith("tail="):
                key, value = "tail", cls._tail(text, part.removeprefix("tail="))
            else:
                component = cls._component(text, part, rho)
                key = "hub" if component.structure == "hub" else "grouping"
                value = component
            if key in fields and fields[key] is not None:
                raise ValueError(f"co-occurrence spec {text!r}: a mixture takes at most one {key}")
            fields[key] = value
        grouping, hub = fields.get("grouping"), fields["hub"]  # "tail=T" alone has no "&": an unknown spec
        named = [k for group in (grouping.groups or ()) for k in group] if grouping else []
        if hub is not None and hub.hub in named:
            raise ValueError(f"co-occurrence spec {text!r}: the hub {hub.hub} is also in a group")
        return cls("mix", rho, group_size=grouping and grouping.group_size, groups=grouping and grouping.groups,
                   hub=hub and hub.hub, ties=hub and hub.ties, tail=fields.get("tail", 0.0))

    @staticmethod
    def _tail(text: str, value: str) -> float:
        try:
            tail = float(value)
        except ValueError:
            raise ValueError(f"co-occurrence spec {text!r}: tail={value!r} is not a number") from None
        if not (math.isfinite(tail) and tail >= 0):
            raise ValueError(f"co-occurrence spec {text!r}: the tail exponent must be a finite number >= 0, got {value}")
        return tail + 0.0

    @classmethod
    def _component(cls, text: str, structure: str, rho: float) -> "CooccurSpec":
        name, equals, argument = structure.partition("=")
        if name == "pairs" and not equals:
            return cls("pairs", rho, group_size=2)
        if name == "hub":
            if not equals:
                return cls("hub", rho)
            hub, at, ties = argument.partition("@")
            if not hub.isdigit():
                raise ValueError(f"co-occurrence spec {text!r}: the hub must be a class index, got {hub!r}")
            if not at:
                return cls("hub", rho, hub=int(hub))
            if not _TIES.fullmatch(ties):
                raise ValueError(f"co-occurrence spec {text!r}: hub=K@ takes the tied classes like 1+2+3, got {ties!r}")
            tied = tuple(int(k) for k in ties.split("+"))
            if int(hub) in tied or len(set(tied)) != len(tied):
                raise ValueError(f"co-occurrence spec {text!r}: the tied classes must be distinct and not the hub")
            if "&" not in text:
                raise ValueError(f"co-occurrence spec {text!r}: a tied hub is a mixture component; add &tail=0 for a tied hub alone")
            return cls("hub", rho, hub=int(hub), ties=tied)
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
        if self.structure == "mix":
            parts = [] if self.group_size is None and self.groups is None else [
                "pairs" if self.group_size == 2 else str(CooccurSpec("groups", self.rho, self.group_size, self.groups)).rpartition(":")[0]]
            if self.hub is not None:
                parts.append(f"hub={self.hub}" + ("" if self.ties is None else "@" + "+".join(map(str, self.ties))))
            if self.tail or len(parts) < 2:  # a single component with & is still a mixture
                parts.append(f"tail={repr(self.tail).removesuffix('.0')}")
            return "&".join(parts) + f":{rho}"
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
        self.hub, self.ties = None, None
        self.frequencies = None  # a mixture's free-draw weights (k + 1)^(-tail)
        if spec.structure == "mix":
            self.frequencies = np.arange(1, num_classes + 1, dtype=np.float64) ** -spec.tail
            mates = self._mates(spec, num_classes) if spec.group_size or spec.groups else [()] * num_classes
            if spec.hub is not None:
                named = [spec.hub] + list(spec.ties or ())
                if max(named) >= num_classes:
                    raise ValueError(f"co-occurrence {spec}: class {max(named)} is not one of the {num_classes} classes")
                self.hub, self.ties = spec.hub, spec.ties
                joined = set(spec.ties) if spec.ties is not None else set(range(num_classes)) - {spec.hub}
                mates = [m + ((spec.hub,) if k in joined else ()) for k, m in enumerate(mates)]
            self.context = tuple(mates)
            return
        if spec.structure == "hub":
            if spec.hub >= num_classes:
                raise ValueError(f"co-occurrence {spec}: hub {spec.hub} is not one of the {num_classes} classes")
            self.hub = spec.hub
            self.context = tuple(() if k == self.hub else (self.hub,) for k in range(num_classes))
            return
        self.context = tuple(self._mates(spec, num_classes))

    @staticmethod
    def _mates(spec: CooccurSpec, num_classes: int) -> list[tuple[int, ...]]:
        """Each class's group-mates."""
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
        return mates

    def context_matrix(self) -> torch.Tensor:
        """(c, c) bool: row k marks the context of class k."""
        matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.bool)
        for k, context in enumerate(self.context):
            matrix[k, list(context)] = True
        return matrix

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n distinct labels (int64, in draw order) from the generator."""
        c = self.num_classes
        if self.frequencies is not None:
            return self._sample_mixture(rng, n)
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

    def _sample_mixture(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.rho == 0.0 and self.spec.tail == 0.0:  # exactly the draws of the uniform sets
            return rng.choice(self.num_classes, n, replace=False)
        labels: list[int] = []
        absent = np.ones(self.num_classes, dtype=bool)

        def add(k):
            labels.append(k)
            absent[k] = False

        if self.hub is not None and self.ties is None and rng.random() < self.rho:
            add(self.hub)
        while len(labels) < n:
            weights = self.frequencies * absent
            drawn = int(rng.choice(self.num_classes, p=weights / weights.sum()))
            add(drawn)
            # context[drawn]: its group-mates, then the hub where drawn brings it
            for mate in rng.permutation([j for j in self.context[drawn] if j != self.hub and absent[j]]).tolist():
                if len(labels) < n and rng.random() < self.rho:
                    add(mate)
            if self.ties is not None and drawn in self.ties and absent[self.hub] and len(labels) < n and rng.random() < self.rho:
                add(self.hub)
        return np.array(labels, dtype=np.int64)
