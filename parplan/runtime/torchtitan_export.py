"""Export a plan to torchtitan 0.3.x: the job-config overrides, the schedule CSV, a launch README.

torchtitan 0.3 picks a job with `--module MODEL --config FUNCTION` (a Python config
registry, `torchtitan.models.llama3.config_registry.llama3_debugmodel`) and takes every
other setting as a `--section.field value` override of that config (tyro). A plan of a
`titan:MODEL:FLAVOR` model (`parplan.zoo.torchtitan`) maps onto it field by field
(the table is in docs/torchtitan.md): the degrees; `module_fqns_per_model_part` from each
schedule stage's pieces, in stage order; a schedule name whose stage → rank map torchtitan
derives is the plan's (1F1B, Interleaved1F1B, ZBVZeroBubble); the schedule as PyTorch's
CSV; the micro-batch size and one replica's batch; the activation-checkpoint mode.

Data parallelism: a plan with ZeRO-3 (`plan.techniques.zero == 3`, FSDP) maps its layout
as it is: `data_parallel_shard_degree` = its shard group, `data_parallel_replicate_degree`
= its copies (torchtitan's HSDP). ZeRO-0/1/2 replicas keep whole parameters (ZeRO-1/2's
optimizer and gradient shards torchtitan lacks: its DDP holds at least the memory the plan
assumed), so DP maps to replication (`data_parallel_shard_degree 1`); with EP e, torchtitan
borrows the experts' ranks from FSDP (`dp_shard · tp = efsdp · ep`), so the shard degree is
e and the replicate degree DP / e. Refused (each a `ParplanError`):
pieces that are not torchtitan module names, stages cut inside one, stages out of model
order, a plan of fewer layers than the flavor, tied weights under PP (torchtitan refuses
them), two chains (DualPipe) and placements torchtitan cannot derive from a schedule name.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from parplan.errors import ParplanError

if TYPE_CHECKING:
    from parplan.plan import Plan
    from parplan.schedule.ir import Schedule

__all__ = ["ACTIVATION_CHECKPOINT_MODES", "activation_checkpoint_mode", "TitanJob", "stage_fqns",
           "schedule_name", "titan_job", "export_files"]

ACTIVATION_CHECKPOINT_MODES = ("none", "selective", "full")  # torchtitan's subcommands, parplan's recompute modes
CSV_NAME, ARGS_NAME, README_NAME = "schedule.csv", "overrides.txt", "README.md"


def activation_checkpoint_mode(plan: "Plan") -> str:
    """The plan's recomputation as torchtitan's `activation-checkpoint:` subcommand.

    The one place that reads it: `plan.techniques.recompute` once plans carry memory
    techniques, "none" before (no recomputation is what the plan's memory assumes)."""
    mode = getattr(getattr(plan, "techniques", None), "recompute", "none")
    mode = getattr(mode, "value", mode)  # an enum member or its string
    if mode not in ACTIVATION_CHECKPOINT_MODES:
        raise ParplanError(f"plan recompute mode {mode!r} has no torchtitan equivalent; torchtitan's activation "
                           f"checkpointing is one of {', '.join(ACTIVATION_CHECKPOINT_MODES)}")
    return mode


def _planned_degree(plan: "Plan", key: str) -> int:
    value = plan.solver.get("planning", {}).get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParplanError(f"plan solver.planning.{key}={value!r} is not an integer >= 1; regenerate the plan "
                           f"with parplan plan")
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class TitanJob:
    """One torchtitan job: `torchrun --nproc_per_node=world_size -m torchtitan.train *args`."""

    module: str  # --module
    config: str  # --config
    world_size: int  # pp × dp × tp processes
    overrides: tuple[str, ...]  # every other argument, in order
    csv: str  # the schedule, PyTorch's compute-only CSV ("" without pipeline parallelism)
    stage_modules: tuple[tuple[str, ...], ...]  # module_fqns_per_model_part

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", tuple(self.overrides))
        object.__setattr__(self, "stage_modules", tuple(tuple(part) for part in self.stage_modules))
        if self.world_size < 1:
            raise ParplanError(f"torchtitan job world_size={self.world_size} must be >= 1")

    @property
    def args(self) -> tuple[str, ...]:
        return ("--module", self.module, "--config", self.config, *self.overrides)

    def launch_command(self) -> str:
        return shlex.join(["torchrun", f"--nproc_per_node={self.world_size}", "-m", "torchtitan.train", *self.args])


def _unmapped(pieces: Sequence[str], fqns: Sequence[str]) -> ParplanError:
    names = set(fqns)
    inside = [p for p in pieces if any(p.startswith(f"{f}.") for f in names)]
    foreign = [p for p in pieces if p not in names and p not in inside]
    if foreign:
        return ParplanError(
            f"plan stage pieces {foreign[:4]} are not torchtitan module names (torchtitan splits a model by "
            f"{', '.join(list(fqns)[:3])}, …, {fqns[-1]}); plan a torchtitan model instead, e.g. "
            f"parplan plan titan:llama3:debugmodel, so the pieces are its FQNs")
    return ParplanError(
        f"plan stage pieces {inside[:4]} cut inside torchtitan modules; module_fqns_per_model_part takes whole "
        f"ones ({', '.join(list(fqns)[:3])}, …). Plan with the decoder block kept whole: parplan plan … "
        f"--leaf CLASS (e.g. torchtitan.models.llama3.model.Llama3TransformerBlock)")


def stage_fqns(plan: "Plan", fqns: Sequence[str]) -> list[list[str]]:
    """`module_fqns_per_model_part`: schedule stage s's pieces, checked to be whole torchtitan modules
    (`fqns`, the flavor's names in forward order), each on one model stage, in model order."""
    pieces = [p for st in plan.stages for p in st.pieces]
    if any(p not in fqns for p in pieces):
        raise _unmapped([p for p in pieces if p not in fqns], fqns)
    order = {f: k for k, f in enumerate(fqns)}
    parts = [sorted(st.pieces, key=order.__getitem__) for st in plan.stages]
    chain = [f for s in plan.schedule.chains[0] for f in parts[s]]
    missing = [f for f in fqns if f not in chain]
    if missing:
        raise ParplanError(
            f"the plan's stages hold none of {missing[:4]} of torchtitan's {plan.model.spec} model ({len(fqns)} "
            f"modules); torchtitan builds every module of the flavor, so plan the whole flavor (drop layers=)")
    if chain != list(fqns):
        raise ParplanError(
            f"the plan's stages run torchtitan's modules in the order {chain[:6]}…, not the model's; "
            f"torchtitan runs each stage's modules in model order and hands the output to the next stage, "
            f"so each stage must hold a contiguous run, stage after stage: re-plan (placement chain, loop or v)")
    return parts


def schedule_name(schedule: "Schedule") -> str:
    """The torchtitan schedule name whose stage → rank map (`_get_pp_rank_to_stage_indices_mapping`)
    is `schedule`'s: loop (stage s on rank s mod P) or V (rank r holds r and 2P−1−r)."""
    p, s = schedule.num_ranks, schedule.num_stages
    placed = tuple(schedule.stage_to_rank)
    if s % p == 0 and placed == tuple(k % p for k in range(s)):
        return "1F1B" if s == p else "Interleaved1F1B"
    if s == 2 * p and placed == tuple(k if k < p else 2 * p - 1 - k for k in range(s)):
        return "ZBVZeroBubble"
    raise ParplanError(
        f"the plan places stages on ranks {list(placed)}; torchtitan derives the placement from the schedule name: "
        f"loop (stage s on rank s mod {p}) or V (rank r holds stages r and {2 * p - 1}−r). Plan with "
        f"--placement chain, loop or v")


def _degrees(plan: "Plan") -> dict[str, int]:
    from parplan.runtime.replicas import expert_parallel_degree

    dp, tp, ep = _planned_degree(plan, "data_parallel"), _planned_degree(plan, "tensor_parallel"), \
        expert_parallel_degree(plan)
    if dp % ep:
        raise ParplanError(f"plan EP degree {ep} does not divide its DP degree {dp}; parplan places EP inside "
                           f"the data-parallel replicas: regenerate the plan with parplan plan")
    shard, replicate = ep, dp // ep
    techniques = getattr(plan, "techniques", None)
    if techniques is not None and techniques.zero == 3:
        shard, replicate = techniques.dp_shard, techniques.dp_replicate
        if shard * replicate != dp or (shard * tp) % ep:
            raise ParplanError(f"plan FSDP layout dp_shard {shard} × dp_replicate {replicate} does not fit its DP "
                               f"degree {dp} with EP {ep} (torchtitan needs dp_shard × TP divisible by EP): "
                               f"regenerate the plan with parplan plan")
    return {"pipeline_parallel_degree": plan.num_ranks, "data_parallel_replicate_degree": replicate,
            "data_parallel_shard_degree": shard, "tensor_parallel_degree": tp, "context_parallel_degree": 1,
            "expert_parallel_degree": ep}


def titan_job(plan: "Plan", csv_path: str) -> TitanJob:
    """The torchtitan job running `plan`, its schedule CSV read from `csv_path` at launch."""
    from parplan.runtime.export import check_torch_csv, torch_csv
    from parplan.zoo import torchtitan as titan

    if not plan.model.spec.startswith("titan:"):
        raise ParplanError(
            f"the plan's model {plan.model.spec!r} is not a torchtitan model, so its stage pieces "
            f"({', '.join(plan.stages[0].pieces[:3])}, …) are not torchtitan module names; plan a torchtitan "
            f"model instead, e.g. parplan plan titan:llama3:debugmodel")
    if plan.mode != "train":
        raise ParplanError("torchtitan.train runs training steps; this is an inference plan: plan with --mode train")
    plan.schedule.require_one_chain()  # before the stage checks, which read the one chain
    model, flavor, options = titan.parse_spec(plan.model.spec.removeprefix("titan:"))
    if "layers" in options:
        raise ParplanError(f"the plan is of {plan.model.spec!r}, {options['layers']} layers of the flavor; torchtitan "
                           f"builds every layer of {titan.config_name(model, flavor)}, so plan the whole flavor "
                           f"(drop layers=)")
    model_config = titan.load_job_config(model, flavor).model_spec.model
    fqns = titan.config_fqns(model_config)
    degrees = _degrees(plan)
    overrides = [f"--parallelism.{k}={v}" for k, v in degrees.items()]
    text, parts = "", [list(fqns)]  # one rank: torchtitan runs the whole model, the pieces do not matter
    if plan.num_ranks > 1:
        if getattr(model_config, "enable_weight_tying", False):
            raise ParplanError(
                f"torchtitan's {titan.config_name(model, flavor)} ties its embedding and output weights "
                f"(enable_weight_tying), and torchtitan 0.3 refuses weight tying with pipeline parallelism; "
                f"plan it with --pp 1, or plan a flavour without tied weights")
        parts = stage_fqns(plan, fqns)
        s = plan.schedule
        text = torch_csv(s)
        check_torch_csv(text, num_ranks=s.num_ranks, num_stages=s.num_stages,
                        num_microbatches=s.microbatches_per_chain)
        overrides += [f"--parallelism.pipeline_parallel_schedule={schedule_name(s)}",
                      f"--parallelism.pipeline_parallel_schedule_csv={csv_path}",
                      f"--parallelism.pipeline_parallel_microbatch_size={plan.microbatch_size}",
                      "--parallelism.module_fqns_per_model_part", *(",".join(part) for part in parts),
                      "--training.disable_cuda_graphs"]  # torchtitan refuses CUDA graphs with PP
    elif plan.schedule.num_stages > 1:
        raise ParplanError(f"the plan runs {plan.schedule.num_stages} stages on one rank; torchtitan pipelines only "
                           f"over two or more ranks: plan with --placement chain (one stage on the rank), or with "
                           f"--pp 2 or more")
    overrides += [f"--training.local_batch_size={plan.model.batch}", f"--training.seq_len={plan.model.seq}",
                  f"activation-checkpoint:{activation_checkpoint_mode(plan)}"]
    world = math.prod(degrees[k] for k in ("pipeline_parallel_degree", "data_parallel_replicate_degree",
                                           "data_parallel_shard_degree", "tensor_parallel_degree"))
    return TitanJob(module=model, config=titan.config_name(model, flavor), world_size=world,
                    overrides=tuple(overrides), csv=text, stage_modules=tuple(tuple(p) for p in parts))


def _readme(plan: "Plan", job: TitanJob, folder: Path) -> str:
    lines = [
        f"# torchtitan job for {plan.model.spec} (exported by parplan)",
        "",
        f"Plan: {plan.schedule.name} on {plan.num_ranks} pipeline ranks, {plan.num_microbatches} micro-batches of "
        f"{plan.microbatch_size}, predicted step {plan.predicted.step_time:.6g} {plan.time_unit}.",
        f"Needs torchtitan 0.3.x and {job.world_size} GPUs; run from torchtitan's checkout (its config paths, "
        f"e.g. the tokenizer under ./tests/assets, are relative to it):",
        "",
        "```bash",
        job.launch_command(),
        "```",
        "",
        f"or `torchrun --nproc_per_node={job.world_size} -m torchtitan.train $(cat {folder / ARGS_NAME})`.",
    ]
    if job.csv:
        lines += ["", f"`{CSV_NAME}` is the schedule (PyTorch's compute-only CSV, one row per pipeline rank); "
                      f"the command reads it from `{folder / CSV_NAME}`: keep it there or edit the path."]
    lines += ["", "Stages (`module_fqns_per_model_part`, one entry per stage):", "", "| stage | rank | modules |",
              "|---|---|---|"]
    lines += [f"| {st.index} | {st.rank} | {', '.join(part)} |" for st, part in zip(plan.stages, job.stage_modules)]
    return "\n".join(lines) + "\n"


def export_files(plan: "Plan", folder: str | Path) -> dict[str, str]:
    """The files of `parplan export --torchtitan FOLDER`, path → text (nothing is written here)."""
    folder = Path(folder).resolve()
    job = titan_job(plan, str(folder / CSV_NAME))
    files = {str(folder / ARGS_NAME): "\n".join(job.args) + "\n", str(folder / README_NAME): _readme(plan, job, folder)}
    if job.csv:
        files[str(folder / CSV_NAME)] = job.csv
    return files
