"""Helpers of the rule tests: a traced group read as hand-comparable units."""

from __future__ import annotations

from prunekit.surgery.graph import TraceResult


def units(tr: TraceResult, param: str, dim: int) -> list[tuple[dict[str, list[int]], bool]]:
    """The units of the group holding ``param`` along ``dim``: ({"param:dim": indices}, removable), sorted."""
    g = tr.group_of(param, dim)
    assert g is not None, f"{param}:{dim} is in no group"
    out = [
        ({f"{p}:{d}": sorted(int(i) for i in idx) for (p, d), idx in c.items()}, bool(r))
        for c, r in zip(g.classes, g.removable)
    ]
    return sorted(out, key=lambda u: sorted(u[0].items()))


def expect(*unit_list: dict[str, list[int]], removable: bool = True) -> list[tuple[dict[str, list[int]], bool]]:
    return sorted(((u, removable) for u in unit_list), key=lambda u: sorted(u[0].items()))


def members(tr: TraceResult, param: str, dim: int) -> set[str]:
    g = tr.group_of(param, dim)
    assert g is not None
    return {f"{m.param}:{m.dim}" for m in g.members}
