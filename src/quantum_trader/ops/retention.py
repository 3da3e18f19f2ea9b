"""Which backup sets to keep: a pure function of the sets' times, the policy and "now".

A policy is a list of tiers "one set per ``every``, for ``keep_for``". The default is
``6h:7d,1d:30d,1w:12w``: every 6 hours kept 7 days, daily kept 30 days, weekly kept 12 weeks.

Rules, in full (the tests check each one):
- buckets are aligned to UTC: 6-hour buckets start at 00/06/12/18h, daily ones at midnight,
  weekly ones at Monday 00:00 (the ISO week);
- a tier looks at the sets whose age is in ``[0, keep_for)`` and keeps the newest set of each
  of its buckets (newest: it holds the most recent data of that period);
- the newest set overall is always kept, however old (never prune down to nothing);
- a set dated in the future (clock skew) is kept and never counts as newest;
- everything else is pruned.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_UNITS = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DUR_RE = re.compile(r"^(\d+)([mhdw])$")
#: 1970-01-05 (the first Monday after the epoch): weekly buckets start on Mondays.
_MONDAY = 4 * 86_400


def parse_duration(text: str) -> int:
    m = _DUR_RE.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"bad duration {text!r}: use a positive number and m, h, d or w "
                         "(e.g. 6h, 30d, 12w)")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True, slots=True)
class Tier:
    every: int  # seconds between kept sets
    keep_for: int  # seconds a set of this tier is kept
    text: str = field(default="", compare=False)  # as the operator wrote it

    @property
    def label(self) -> str:
        return self.text or f"{_fmt(self.every)}:{_fmt(self.keep_for)}"

    def bucket(self, ts: float) -> int:
        anchor = _MONDAY if self.every % (7 * 86_400) == 0 else 0
        return int((ts - anchor) // self.every)


def _fmt(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"  # pragma: no cover - parse_duration only makes whole minutes


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    tiers: tuple[Tier, ...]

    @classmethod
    def parse(cls, text: str) -> RetentionPolicy:
        """``"6h:7d,1d:30d,1w:12w"`` -> a policy."""
        tiers = []
        for part in text.split(","):
            every, sep, keep = part.strip().partition(":")
            if not sep:
                raise ValueError(f"bad retention tier {part!r}: write EVERY:KEEP_FOR, e.g. 1d:30d")
            tiers.append(Tier(parse_duration(every), parse_duration(keep),
                              f"{every.strip()}:{keep.strip()}"))
        if not tiers:
            raise ValueError("a retention policy needs at least one tier")
        return cls(tuple(tiers))

    def __str__(self) -> str:
        return ",".join(t.label for t in self.tiers)


DEFAULT_POLICY = RetentionPolicy.parse("6h:7d,1d:30d,1w:12w")


@dataclass(frozen=True)
class RetentionPlan:
    keep: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> why
    prune: list[str] = field(default_factory=list)  # oldest first


def plan_retention(sets: Mapping[str, float], now: float,
                   policy: RetentionPolicy = DEFAULT_POLICY) -> RetentionPlan:
    """Split ``sets`` (name -> creation time, epoch seconds) into kept (with reasons) and
    pruned. Pure: no clock, no file system."""
    reasons: dict[str, list[str]] = {name: [] for name in sets}
    ordered = sorted(sets.items(), key=lambda kv: (kv[1], kv[0]))
    past = [(n, ts) for n, ts in ordered if ts <= now]
    for name, ts in ordered:
        if ts > now:
            reasons[name].append("future")
    if past:
        reasons[past[-1][0]].append("newest")
    for tier in policy.tiers:
        newest_in_bucket: dict[int, str] = {}
        for name, ts in past:  # ascending, so the last one seen per bucket is the newest
            if now - ts < tier.keep_for:
                newest_in_bucket[tier.bucket(ts)] = name
        for name in newest_in_bucket.values():
            reasons[name].append(tier.label)
    keep = {n: tuple(r) for n, r in reasons.items() if r}
    prune = [n for n, _ in ordered if n not in keep]
    return RetentionPlan(keep, prune)
