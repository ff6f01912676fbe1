"""Repeated-block detection: module instances with the same class, op shapes and parameter
shapes are the same block, so a planner can solve one and reuse the answer."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from parplan.trace.graph import RepeatedBlock

__all__ = ["find_repeated_blocks"]


def find_repeated_blocks(
    members: dict[str, list[tuple[str, int]]],
    classes: dict[str, str],
) -> tuple[list[RepeatedBlock], dict[str, int]]:
    """Group module instances by structure.

    `members[path]` lists (structural key of an op, forward FLOPs) for every op inside the
    module at `path` (its whole subtree), in program order; `classes[path]` is its class.
    Returns the maximal repeated blocks (a repeated module inside a repeated module is not
    reported again) and a map from instance path to block index.
    """
    by_signature: dict[str, list[str]] = defaultdict(list)
    for path, ops in members.items():
        if not path:
            continue  # the root module is never repeated
        digest = hashlib.sha1(repr((classes.get(path, ""), [k for k, _ in ops])).encode()).hexdigest()[:12]
        by_signature[digest].append(path)

    repeated = {sig: paths for sig, paths in by_signature.items() if len(paths) >= 2}
    in_repeated = {p for paths in repeated.values() for p in paths}

    def has_repeated_ancestor(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:i]) in in_repeated for i in range(1, len(parts)))

    blocks: list[RepeatedBlock] = []
    instance_block: dict[str, int] = {}
    for sig, all_paths in sorted(repeated.items(), key=lambda kv: kv[1][0]):
        paths = [p for p in all_paths if not has_repeated_ancestor(p)]
        if len(paths) < 2:
            continue
        ops = members[paths[0]]
        blocks.append(
            RepeatedBlock(
                module_class=classes.get(paths[0], ""),
                instances=tuple(paths),
                signature=sig,
                ops_per_instance=len(ops),
                forward_flops_per_instance=sum(f for _, f in ops),
            )
        )
        for p in paths:
            instance_block[p] = len(blocks) - 1
    return blocks, instance_block
