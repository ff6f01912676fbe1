"""Issue #20's acceptance benchmark: torchtitan's recipes beside parplan's plan on one cost model.

Each recipe is evaluated as given (`parplan plan --schedule ... --pp ... --tp ...`, no
search: docs/planner.md "Evaluate a configuration") and parplan searches the same model,
cluster, global batch and memory cap; one markdown row per recipe gives both step times,
the gain, the peak memory per device and whether each fits.

    python benchmarks/recipes.py                       # every recipe, searched plans at quick effort
    python benchmarks/recipes.py --only llama3_8b --effort normal

The recipes (torchtitan 0.3, `torchtitan/models/llama3/train_configs/`):

* llama3_8b on 8×H100: FSDP over the 8 GPUs (data_parallel_shard_degree -1), selective
  (op-level) activation checkpointing, seq_len 8192, local_batch_size 1 — one sequence per
  GPU per step, no pipeline;
* llama3_70b on 64×H100: TP 8 × FSDP 8, full activation checkpointing, seq_len 8192,
  local_batch_size 8 — each FSDP rank runs its 8 sequences as one micro-batch.

The recipe is evaluated with its memory techniques fixed (`--zero 3 --dp-shard N
--recompute MODE`: FSDP over the data-parallel group, torchtitan's activation
checkpointing); the searched plan gets the same model, cluster, global batch and memory
cap and chooses its own degrees, schedule and techniques. If `parplan plan` lacks one of
the technique flags, the recipe runs without it and the row says it is not the recipe.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass

LLAMA3_8B = "llama:layers=32,hidden=4096,heads=32,kv_heads=8,intermediate=14336,vocab=128256,rope_theta=500000"
ZOO_70B = "llama:layers=80,hidden=8192,heads=64,kv_heads=8,intermediate=28672"
LLAMA3_70B = "llama:layers=80,hidden=8192,heads=64,kv_heads=8,intermediate=28672,vocab=128256,rope_theta=500000"


@dataclass(frozen=True, kw_only=True, slots=True)
class Recipe:
    name: str
    model: str
    cluster: str
    seq: int
    local_batch: int  # sequences per data-parallel rank per step, one micro-batch (no PP)
    tp: int
    dp_shard: int  # FSDP degree (torchtitan's data_parallel_shard_degree)
    recompute: str  # none | selective | full
    # the searched plan's micro-batch: one sequence, the same global batch
    search_batch: int = 1

    @property
    def dp(self) -> int:
        return self.dp_shard

    def recipe_argv(self) -> list[str]:
        """The recipe as `parplan plan` flags: no pipeline, one micro-batch per replica."""
        return [self.model, "--cluster", self.cluster, "--seq", str(self.seq), "--batch", str(self.local_batch),
                "-m", str(self.dp), "--pp", "1", "--tp", str(self.tp), "--schedule", "1f1b"]

    def search_argv(self) -> list[str]:
        global_batch = self.local_batch * self.dp
        return [self.model, "--cluster", self.cluster, "--seq", str(self.seq), "--batch", str(self.search_batch),
                "-m", str(global_batch // self.search_batch)]

    def technique_flags(self, known: set[str]) -> tuple[list[str], list[str]]:
        """(flags `parplan plan` accepts, flags the recipe needs that it lacks)."""
        wanted = {"--zero": "3", "--dp-shard": str(self.dp_shard), "--recompute": self.recompute}
        have = [x for flag, value in wanted.items() if flag in known for x in (flag, value)]
        return have, [flag for flag in wanted if flag not in known]


RECIPES = (
    Recipe(name="llama3_8b", model=LLAMA3_8B, cluster="h100x8", seq=8192, local_batch=1, tp=1, dp_shard=8,
           recompute="selective"),
    Recipe(name="llama3_70b", model=LLAMA3_70B, cluster="h100x64", seq=8192, local_batch=8, tp=8, dp_shard=8,
           recompute="full"),
    # the zoo's 70B shape as docs/benchmarks.md plans it (seq 4096, 64 sequences a step) in
    # llama3_70b's layout
    Recipe(name="zoo 70B, llama3_70b's layout", model=ZOO_70B, cluster="h100x64", seq=4096, local_batch=8, tp=8,
           dp_shard=8, recompute="full"),
)


def _parplan(*argv: str) -> subprocess.CompletedProcess:
    """`parplan ARGV` as a user runs it (this Python, this checkout's package)."""
    return subprocess.run([sys.executable, "-m", "parplan.cli", *argv], capture_output=True, text=True)


def plan_flags() -> set[str]:
    """Every long option `parplan plan --help` lists."""
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", _parplan("plan", "--help").stdout))


def run_plan(argv: list[str]) -> tuple[dict | None, str]:
    """`parplan plan ARGV --json -q`: the JSON report (None on failure), and stderr."""
    done = _parplan("plan", *argv, "--json", "-q")
    return (json.loads(done.stdout) if done.returncode == 0 else None), done.stderr.strip()


def row(recipe: Recipe, effort: str, known: set[str]) -> str:
    flags, missing = recipe.technique_flags(known)
    given, err = run_plan(recipe.recipe_argv() + flags)
    plain, err_p = run_plan(recipe.recipe_argv() + ["--zero", "1", "--recompute", "none"]) if not missing else \
        (None, "(technique flags missing)")
    searched, err_s = run_plan(recipe.search_argv() + ["--effort", effort])
    caveat = f"without {', '.join(missing)} (ZeRO-1, no recomputation): not the recipe" if missing else ""

    def cell(report, error):
        if report is None:
            need = re.search(r"memory cap of ([\d.]+ \w+) per device: (?:it needs|the smallest peak[^\d]*) "
                             r"([\d.]+ \w+)", error)
            return f"does not fit: needs {need[2]} of {need[1]}" if need else \
                f"— ({error.removeprefix('parplan plan: error: ')[:160]})"
        return (f"{report['step_time_s']:.4g} s, {report['degrees']} {report['schedule']}, "
                f"{max(report['peak_memory_bytes']) / 2**30:.1f} GiB")

    gain = ""
    if given is not None and searched is not None:
        gain = f"{1 - searched['step_time_s'] / given['step_time_s']:+.1%}"
    return (f"| {recipe.name} | {recipe.cluster} | {cell(given, err)} | {cell(plain, err_p)} | {cell(searched, err_s)} "
            f"| {gain} | {caveat} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=[r.name for r in RECIPES], default=None)
    p.add_argument("--effort", default="quick", help="the searched plans' --effort (default quick)")
    args = p.parse_args()
    known = plan_flags()
    print("| recipe | cluster | recipe evaluated (step, degrees, peak/device) | its layout with ZeRO-1, no recomputation "
          "| parplan searched | gain | note |")
    print("|---|---|---|---|---|---|---|")
    for recipe in RECIPES:
        if args.only and recipe.name not in args.only:
            continue
        print(row(recipe, args.effort, known), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
