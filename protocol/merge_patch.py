"""JSON Merge Patch, RFC 7386: apply a patch, and compute one between states."""

from __future__ import annotations

from typing import Any

__all__ = ["apply_patch", "diff"]


def apply_patch(target: Any, patch: Any) -> Any:
    """Return ``target`` with ``patch`` applied; neither argument is modified."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_patch(result.get(key), value)
    return result


def diff(before: Any, after: Any) -> Any:
    """The smallest merge patch that turns ``before`` into ``after``.

    Merge patches cannot set a value to null; states here never hold nulls.
    """
    if not isinstance(before, dict) or not isinstance(after, dict):
        return after
    patch: dict[str, Any] = {key: None for key in before if key not in after}
    for key, value in after.items():
        if key not in before:
            patch[key] = value
        elif before[key] != value:
            patch[key] = diff(before[key], value)
    return patch
