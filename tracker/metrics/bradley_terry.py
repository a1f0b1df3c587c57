"""Bradley-Terry strengths from pairwise judgements ("which image is better?"), with bootstrap intervals.

The model: label i beats label j with probability p_i / (p_i + p_j). Strengths are fitted by Hunter's (2004)
minorization-maximization updates, p_i <- W_i / sum_j n_ij / (p_i + p_j), with a tie counted as half a win for
each side, and reported as log-strengths centred on 0 (the mean label). A weak prior (one virtual tie of every
label against the mean label) keeps strengths finite when one label won every comparison.

Intervals: the fit is repeated on bootstrap resamples of the seeds (a seed's judgements stay together, as
effects pair runs over seeds), seeded, so the same judgements give the same intervals. With fewer judgements
than ``MIN_JUDGEMENTS`` per label, or labels never compared with the rest, no order is given: ``Strengths.note``
says why, and ``next_pairs`` names the comparisons that would tell most (the closest labels, the least
judged first). Pure: no numpy needed.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

MIN_JUDGEMENTS = 3  # per label, before an order is given
ITERATIONS = 200
TOLERANCE = 1e-9
PRIOR = 1.0  # virtual ties against the mean label


@dataclass(frozen=True)
class Judgement:
    """One comparison: ``a`` against ``b``, ``outcome`` 1 when a won, 0 when b won, 0.5 for a tie."""

    a: str
    b: str
    outcome: float
    seed: int = 0


@dataclass(frozen=True)
class LabelStrength:
    label: str
    strength: float | None  # log-strength, 0 = the mean label
    low: float | None
    high: float | None
    judgements: int


@dataclass(frozen=True)
class Strengths:
    labels: list[LabelStrength]
    ordered: bool  # False: too few judgements for an order (see note)
    note: str | None
    next_pairs: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"ordered": self.ordered, "note": self.note,
                "labels": [vars(s) for s in self.labels], "next_pairs": [list(p) for p in self.next_pairs]}


def fit(judgements: Sequence[Judgement], labels: Sequence[str]) -> dict[str, float]:
    """Log-strength per label (mean 0) by MM iterations with the virtual-tie prior."""
    labels = list(labels)
    wins: dict[str, float] = {x: PRIOR / 2 for x in labels}
    games: dict[tuple[str, str], float] = defaultdict(float)
    for j in judgements:
        wins[j.a] += j.outcome
        wins[j.b] += 1 - j.outcome
        games[(j.a, j.b)] += 1
        games[(j.b, j.a)] += 1
    p = {x: 1.0 for x in labels}
    for _ in range(ITERATIONS):
        new = {}
        for i in labels:
            denom = PRIOR / (p[i] + 1.0)  # the virtual tie against a label of strength 1 (the mean)
            for k in labels:
                n = games.get((i, k))
                if n:
                    denom += n / (p[i] + p[k])
            new[i] = wins[i] / denom
        g = math.exp(sum(math.log(v) for v in new.values()) / len(new))
        new = {k: v / g for k, v in new.items()}
        change = max(abs(math.log(new[k]) - math.log(p[k])) for k in labels)
        p = new
        if change < TOLERANCE:
            break
    return {k: math.log(v) for k, v in p.items()}


def _connected(judgements: Sequence[Judgement], labels: Sequence[str]) -> bool:
    seen, todo = set(), [labels[0]]
    adj = defaultdict(set)
    for j in judgements:
        adj[j.a].add(j.b)
        adj[j.b].add(j.a)
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo.extend(adj[x] - seen)
    return seen >= set(labels)


def strengths(judgements: Iterable[Judgement], labels: Sequence[str] | None = None, *, resamples: int = 1000,
              confidence: float = 0.95, seed: int = 0, next_n: int = 3) -> Strengths:
    """Strengths with bootstrap intervals over seeds, or, with too few judgements, a note and no order."""
    js = list(judgements)
    labels = list(labels) if labels is not None else sorted({j.a for j in js} | {j.b for j in js})
    counts = {x: 0 for x in labels}
    pair_counts: dict[frozenset, int] = defaultdict(int)
    for j in js:
        counts[j.a] += 1
        counts[j.b] += 1
        pair_counts[frozenset((j.a, j.b))] += 1
    if len(labels) < 2:
        return Strengths([LabelStrength(x, None, None, None, counts.get(x, 0)) for x in labels], False,
                         "fewer than two labels: nothing to compare")
    short = [x for x in labels if counts[x] < MIN_JUDGEMENTS]
    theta = fit(js, labels) if js else {x: 0.0 for x in labels}
    nxt = _next_pairs(labels, theta, pair_counts, next_n)
    if short or not _connected(js, labels):
        why = (f"too few judgements for an order: {', '.join(f'{x} ({counts[x]})' for x in short)} "
               f"{'has' if len(short) == 1 else 'have'} fewer than {MIN_JUDGEMENTS}" if short
               else "the labels are not all compared with each other (directly or through others)")
        return Strengths([LabelStrength(x, None, None, None, counts[x]) for x in labels], False, why, nxt)
    by_seed: dict[int, list[Judgement]] = defaultdict(list)
    for j in js:
        by_seed[j.seed].append(j)
    seeds = sorted(by_seed)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {x: [] for x in labels}
    for _ in range(resamples if len(seeds) > 1 else 0):
        draw = [j for s in (rng.choice(seeds) for _ in seeds) for j in by_seed[s]]
        t = fit(draw, labels)
        for x in labels:
            samples[x].append(t[x])
    alpha = (1 - confidence) / 2
    out = []
    for x in sorted(labels, key=lambda k: -theta[k]):
        s = sorted(samples[x])
        low = s[int(alpha * (len(s) - 1))] if s else None
        high = s[int(math.ceil((1 - alpha) * (len(s) - 1)))] if s else None
        out.append(LabelStrength(x, theta[x], low, high, counts[x]))
    note = None if len(seeds) > 1 else "one seed only: no interval (judge images of more seeds)"
    return Strengths(out, True, note, nxt)


def _next_pairs(labels: Sequence[str], theta: dict[str, float], pair_counts: dict, n: int) -> list[tuple[str, str]]:
    """The comparisons that would tell most: the closest labels, the least judged first."""
    pairs = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]
    pairs.sort(key=lambda p: (abs(theta[p[0]] - theta[p[1]]) * (1 + pair_counts[frozenset(p)]), p))
    return pairs[:n]


def render(axis: str, s: Strengths, digits: int = 2) -> str:
    """Plain text for the terminal."""
    lines = [f"{axis}: Bradley-Terry strengths (log scale, 0 = the mean label)"]
    if not s.ordered:
        lines.append(f"  {s.note}")
    for x in s.labels:
        if x.strength is None:
            lines.append(f"  {x.label}: {x.judgements} judgements")
        else:
            ci = f" [{x.low:.{digits}f}, {x.high:.{digits}f}]" if x.low is not None else ""
            lines.append(f"  {x.label}: {x.strength:+.{digits}f}{ci}  ({x.judgements} judgements)")
    if s.ordered and s.note:
        lines.append(f"  note: {s.note}")
    if s.next_pairs:
        lines.append("  judge next: " + "; ".join(f"{a} vs {b}" for a, b in s.next_pairs))
    return "\n".join(lines)
