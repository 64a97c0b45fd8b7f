"""Proving a structural plan: does the model still run, with the same output shapes, after a removal; and
which groups' removal breaks it (followed from the module that raised, else by bisection), so that the
engine keeps those and applies the rest (:func:`~prunekit.surgery.engine.apply_plan_`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from prunekit.apply.transaction import restore_tree, snapshot_tree
from prunekit.calls import call_model, eval_mode, restore_modes, training_modes
from prunekit.errors import ModelError, PrunekitError, inputs_failure
from prunekit.surgery.remove import Removal, remove_

if TYPE_CHECKING:
    from prunekit.surgery.engine import StructuralPlan


def still_runs(
    model: nn.Module,
    inputs: Any,
    shapes: list[tuple[int, ...]],
    where: list[str] | None = None,
    errors: list[Exception] | None = None,
) -> bool:
    """Does ``model`` run on ``inputs`` with outputs of ``shapes``? On a raise, ``where`` gets the module that did
    and ``errors`` the exception."""
    modes = training_modes(model)
    model.eval()
    names = {id(m): n for n, m in model.named_modules()} if where is not None else {}
    stack: list[str] = []
    handles = []
    if where is not None:  # a module whose forward raised never pops: the stack ends at the culprit

        def enter(m: nn.Module, args: Any) -> None:
            if id(m) in names:
                stack.append(names[id(m)])

        def leave(m: nn.Module, args: Any, out: Any) -> None:  # returns None: the output is left alone
            if id(m) in names and stack and stack[-1] == names[id(m)]:
                stack.pop()

        handles = [
            torch.nn.modules.module.register_module_forward_pre_hook(enter),
            torch.nn.modules.module.register_module_forward_hook(leave),
        ]
    try:
        with torch.no_grad():
            out = call_model(model, inputs)
        return [tuple(o.shape) for o in tree_flatten(out)[0] if isinstance(o, Tensor)] == shapes
    except PrunekitError:
        raise
    except Exception as e:  # noqa: BLE001  a forward that breaks is exactly what the check looks for
        if errors is not None:
            errors.append(e)
        if where is not None and stack:
            where.append(stack[-1])
        return False
    finally:
        for h in handles:
            h.remove()
        restore_modes(modes)


def probe(
    model: nn.Module,
    inputs: Any,
    removal: Removal,
    shapes: list[tuple[int, ...]],
    where: list[str] | None = None,
    errors: list[Exception] | None = None,
) -> bool:
    """Would the model still run, with the same output shapes, after this removal? The removal is applied
    in place and undone (module tree restored; no weight is copied)."""
    snap = snapshot_tree(model)
    try:
        remove_(model, removal)
        return still_runs(model, inputs, shapes, where, errors)
    except PrunekitError:
        raise
    except Exception:  # noqa: BLE001
        return False
    finally:
        restore_tree(snap)


def bisect_failures(
    model: nn.Module, inputs: Any, plan: StructuralPlan, shapes: list, failed_in: list[str] | None = None
) -> set[int]:
    """The groups whose removal breaks the model.

    First by following the errors: the module whose forward raised names the suspects (the groups with a
    tensor inside it), and those that break the model on their own are kept; repeated until the rest runs.
    Where that finds nothing (a wrong output shape, or a failure that needs several groups together), by
    bisection over all the plan's active groups. ``failed_in``: where the whole plan already failed (its
    probe is then skipped)."""
    active = [i for i, r in enumerate(plan.remove) if len(r)]
    bad: set[int] = set()
    for step in range(len(active)):
        rest = [i for i in active if i not in bad]
        where: list[str] = list(failed_in) if step == 0 and failed_in is not None else []
        if not rest or (
            not (step == 0 and failed_in is not None) and probe(model, inputs, plan.removal(rest), shapes, where)
        ):
            return bad
        prefix = f"{where[-1]}." if where and where[-1] else None
        suspects = [i for i in rest if prefix and any(m.param.startswith(prefix) for m in plan.groups[i].members)]
        found = _search(model, inputs, plan, shapes, suspects)
        if not found:
            break
        bad |= found
    return bad | _bisect_all(model, inputs, plan, shapes, [i for i in active if i not in bad])


def _search(model: nn.Module, inputs: Any, plan: StructuralPlan, shapes: list, ids: list[int]) -> set[int]:
    """The groups among ``ids`` whose removal alone breaks the model (bisection: a part that runs holds
    none of them)."""
    bad: set[int] = set()

    def search(part_ids: list[int]) -> None:
        if not part_ids:
            return
        if len(part_ids) == 1:
            if not probe(model, inputs, plan.removal(part_ids), shapes):
                bad.add(part_ids[0])
            return
        half = len(part_ids) // 2
        for part in (part_ids[:half], part_ids[half:]):
            if not probe(model, inputs, plan.removal(part), shapes):
                search(part)

    search(ids)
    return bad


def _bisect_all(model: nn.Module, inputs: Any, plan: StructuralPlan, shapes: list, active: list[int]) -> set[int]:
    bad = _search(model, inputs, plan, shapes, active)
    # what remains must work together
    rest = [i for i in active if i not in bad]
    while rest and not probe(model, inputs, plan.removal(rest), shapes):
        bad.add(rest.pop())
    return bad


def unexplained(errors: list[Exception], bad: set[int]) -> None:
    """The whole removal failed with an error no group's removal reproduces: not a size the code fixes."""
    if errors and not bad:
        raise ModelError(
            f"the model's forward failed after the removal ({type(errors[0]).__name__}: {errors[0]}) but ran when "
            "it was retried group by group: the failure does not come from the removed sizes (a forward that "
            "fails now and then?); nothing was changed"
        ) from errors[0]


def keep_groups(plan: StructuralPlan, bad: set[int]) -> None:
    """Drop groups ``bad`` from ``plan`` (their units stay) and say so in its notes."""
    names = [plan.groups[i].members[0].param for i in sorted(bad)]
    plan.notes.append(f"{len(bad)} group(s) kept because the model's code fixes their size: " + ", ".join(names[:8]))
    for i in bad:
        plan.remove[i] = np.zeros(0, dtype=np.int64)


def output_shapes(model: nn.Module, inputs: Any) -> list[tuple[int, ...]]:
    """The shapes of the dense model's outputs on ``inputs``; :class:`~prunekit.errors.DataError` when it does
    not run on them (nothing has changed yet)."""
    try:
        with eval_mode(model), torch.no_grad():
            out = call_model(model, inputs)
    except PrunekitError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as e:
        raise inputs_failure(e, inputs) from e
    return [tuple(o.shape) for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
