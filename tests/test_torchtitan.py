"""A plan exported for torchtitan, checked by torchtitan 0.3 itself (the `torchtitan` extra).

Two debug flavours are planned with the bi-level planner (PP 2, quick effort, decoder
blocks kept whole) and exported with `parplan export --torchtitan`; then torchtitan's own
code reads the result on CPU, without NCCL: its `ConfigManager` parses the exported
arguments, its pipeline splitting (`_pipeline_module_split`) builds every rank's stage
modules from `module_fqns_per_model_part` on the meta device under a fake process group,
and its schedule builder (`_build_pipeline_schedule`) loads the CSV. Each stage must hold
exactly the plan's modules, on the plan's rank, and each rank must run the plan's order.
Skipped where torchtitan is not installed (CI installs it: `.ci/run`); the refusals that
need no torchtitan are in tests/test_cli_contract.py.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import types
from pathlib import Path

import pytest

from parplan.cli import main
from parplan.errors import ParplanError
from parplan.plan import Plan

CASES = {
    # dense, loop placement (interleaved: two stages per rank), DP 2 × TP 2
    "llama3": ["titan:llama3:debugmodel", "--tp", "2", "--placement", "loop",
               "--leaf", "torchtitan.models.llama3.model.Llama3TransformerBlock"],
    # MoE (experts costed at expected load), V placement
    "deepseek_v3": ["titan:deepseek_v3:debugmodel", "--placement", "v",
                    "--leaf", "torchtitan.models.deepseek_v3.model.DeepSeekV3TransformerBlock"],
}


@pytest.fixture(scope="module")
def titan():
    return pytest.importorskip("torchtitan",
                               reason="the torchtitan extra is not installed: pip install -e '.[torchtitan]'")


@pytest.fixture(scope="module")
def exported(titan, tmp_path_factory):
    """name -> (plan, export folder) for each case."""
    out = {}
    for name, argv in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        plan_path = folder / "plan.json"
        code = main(["plan", *argv, "--cluster", "h100x8", "--pp", "2", "--batch", "2", "--seq", "64", "-m", "8",
                     "--effort", "quick", "--quiet", "-o", str(plan_path)])
        assert code == 0
        assert main(["export", str(plan_path), "--torchtitan", str(folder / "job")]) == 0
        out[name] = (Plan.load(plan_path), folder / "job")
    return out


def _parse(folder: Path):
    from torchtitan.config.manager import ConfigManager

    return ConfigManager().parse_args((folder / "overrides.txt").read_text().split())


def _fake_group(rank: int, world_size: int):
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)


def _torchtitan_ranks(config, plan: Plan):
    """Per pipeline rank: torchtitan's stages and its schedule, built from `config` as its trainer does."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torchtitan.distributed import pipeline_parallel as tpp

    par = config.parallelism
    with torch.device("meta"):
        model = config.model_spec.model.build()
    out = []
    for rank in range(par.pipeline_parallel_degree):
        _fake_group(rank, par.pipeline_parallel_degree)
        try:
            mesh = init_device_mesh("cpu", (par.pipeline_parallel_degree,), mesh_dim_names=("pp",))
            stages, _ = tpp._pipeline_module_split(model, mesh, par.pipeline_parallel_schedule, torch.device("meta"),
                                                   par.module_fqns_per_model_part)
            schedule = tpp._build_pipeline_schedule(parallelism=par, local_batch_size=config.training.local_batch_size,
                                                    stages=stages, loss_fn=lambda out, target: (out.sum(), None))
            out.append((stages, schedule))
        finally:
            dist.destroy_process_group()
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_config_manager_loads_the_exported_job(exported, name):
    plan, folder = exported[name]
    config = _parse(folder)
    par, planning = config.parallelism, plan.solver["planning"]
    assert par.pipeline_parallel_degree == plan.num_ranks == 2
    assert par.data_parallel_replicate_degree * par.data_parallel_shard_degree == planning["data_parallel"]
    assert par.tensor_parallel_degree == planning["tensor_parallel"]
    assert par.expert_parallel_degree == planning["expert_parallel"]
    # the local batch is one replica's; torchtitan cuts it into the plan's micro-batches
    assert config.training.local_batch_size // par.pipeline_parallel_microbatch_size == plan.num_microbatches
    assert config.training.local_batch_size == plan.model.batch and config.training.seq_len == plan.model.seq
    assert Path(par.pipeline_parallel_schedule_csv) == folder.resolve() / "schedule.csv"
    assert config.activation_checkpoint is None  # plans without recomputation: activation-checkpoint:none
    assert [set(part) for part in par.module_fqns_per_model_part] == [set(st.pieces) for st in plan.stages]
    # the README's launch command runs the same arguments on pp × dp × tp processes
    readme = (folder / "README.md").read_text()
    command = shlex.split(next(line for line in readme.splitlines() if line.startswith("torchrun ")))
    world = plan.num_ranks * planning["data_parallel"] * planning["tensor_parallel"]
    assert command[:4] == ["torchrun", f"--nproc_per_node={world}", "-m", "torchtitan.train"]
    assert command[4:] == (folder / "overrides.txt").read_text().split()


@pytest.mark.parametrize("name", list(CASES))
def test_torchtitan_splits_the_plans_stages_and_loads_its_schedule(exported, name):
    from parplan.runtime.export import lower_overlap_cells
    from parplan.zoo.torchtitan import model_fqns

    plan, folder = exported[name]
    ranks = _torchtitan_ranks(_parse(folder), plan)
    lowered = lower_overlap_cells(plan.schedule)
    for rank, (stages, schedule) in enumerate(ranks):
        assert [s.stage_index for s in stages] == [st.index for st in plan.stages_of_rank(rank)]
        for stage in stages:
            kept = model_fqns(stage.submod)
            assert sorted(kept) == sorted(plan.stages[stage.stage_index].pieces), f"stage {stage.stage_index}"
        assert schedule._n_microbatches == plan.num_microbatches
        assert [str(a) for a in schedule.pipeline_order[rank]] == [str(a) for a in lowered.orders[rank]]


def test_the_two_cases_cover_loop_and_v_placements(exported):
    llama, _ = exported["llama3"]
    deepseek, _ = exported["deepseek_v3"]
    assert llama.schedule.stage_to_rank == (0, 1, 0, 1)
    assert deepseek.schedule.stage_to_rank == (0, 1, 1, 0)
    assert llama.solver["planning"]["tensor_parallel"] == 2


@pytest.mark.parametrize("baseline,num_ranks", [("1f1b", 3), ("interleaved-1f1b", 3), ("zb-v", 3), ("dualpipev", 2)])
def test_schedule_name_gives_torchtitans_rank_map_for_the_plans_placement(titan, baseline, num_ranks):
    from torchtitan.distributed.pipeline_parallel import _get_pp_rank_to_stage_indices_mapping

    from parplan.baselines import build_baseline
    from parplan.runtime.torchtitan_export import schedule_name

    s = build_baseline(baseline, num_ranks, 6)
    name = schedule_name(s)
    for rank in range(num_ranks):
        theirs = _get_pp_rank_to_stage_indices_mapping(rank, num_ranks, name, s.num_stages)
        assert sorted(theirs) == [k for k in range(s.num_stages) if s.stage_to_rank[k] == rank]


def test_expert_parallel_degrees_satisfy_torchtitans_mesh(exported):
    """EP e inside DP d: replicate d/e × shard e, which torchtitan's mesh accepts (dp_shard·tp = efsdp·ep);
    all-replicate (d × 1) is what it refuses, so the mapping is not a formality."""
    import torch.distributed as dist
    from torchtitan.distributed.parallel_dims import ParallelDims

    from parplan.runtime.torchtitan_export import titan_job

    plan, folder = exported["deepseek_v3"]
    planning = {**plan.solver["planning"], "data_parallel": 4, "expert_parallel": 2}
    job = titan_job(dataclasses.replace(plan, solver={**plan.solver, "planning": planning}), str(folder / "s.csv"))
    degrees = dict(arg.removeprefix("--parallelism.").split("=") for arg in job.overrides
                   if arg.startswith("--parallelism.") and arg.endswith(tuple("0123456789")) and "=" in arg)
    dims = {"dp_replicate": int(degrees["data_parallel_replicate_degree"]),
            "dp_shard": int(degrees["data_parallel_shard_degree"]), "cp": 1,
            "tp": int(degrees["tensor_parallel_degree"]), "pp": int(degrees["pipeline_parallel_degree"]),
            "ep": int(degrees["expert_parallel_degree"])}
    assert (dims["dp_replicate"], dims["dp_shard"], dims["ep"], job.world_size) == (2, 2, 2, 8)
    _fake_group(0, job.world_size)
    try:
        assert ParallelDims(world_size=job.world_size, **dims).build_mesh().size() == job.world_size
        with pytest.raises(ValueError):
            ParallelDims(world_size=job.world_size, **{**dims, "dp_replicate": 4, "dp_shard": 1}).build_mesh()
    finally:
        dist.destroy_process_group()


def test_an_fsdp_plan_exports_its_shard_and_replicate_degrees(exported):
    """ZeRO-3 (FSDP) maps onto torchtitan's HSDP layout as planned; ZeRO-1 stays replication."""
    import torch.distributed as dist
    from torchtitan.distributed.parallel_dims import ParallelDims

    from parplan.plan import Techniques
    from parplan.runtime.torchtitan_export import titan_job

    plan, folder = exported["llama3"]
    planning = {**plan.solver["planning"], "data_parallel": 4}

    def degrees_of(techniques):
        edited = dataclasses.replace(plan, solver={**plan.solver, "planning": planning}, techniques=techniques)
        job = titan_job(edited, str(folder / "s.csv"))
        out = dict(arg.removeprefix("--parallelism.").split("=") for arg in job.overrides
                   if arg.startswith("--parallelism.") and arg.endswith(tuple("0123456789")) and "=" in arg)
        return {k: int(v) for k, v in out.items()}, job.world_size

    hsdp, world = degrees_of(Techniques(zero=3, dp_shard=2, dp_replicate=2, recompute="full"))
    assert (hsdp["data_parallel_shard_degree"], hsdp["data_parallel_replicate_degree"]) == (2, 2)
    ddp, _ = degrees_of(Techniques(zero=1, dp_shard=4, dp_replicate=1))
    assert (ddp["data_parallel_shard_degree"], ddp["data_parallel_replicate_degree"]) == (1, 4)
    _fake_group(0, world)
    try:
        dims = ParallelDims(world_size=world, dp_replicate=2, dp_shard=2, cp=1, tp=hsdp["tensor_parallel_degree"],
                            pp=hsdp["pipeline_parallel_degree"], ep=1)
        assert dims.build_mesh().size() == world and dims.fsdp_enabled and dims.dp_replicate_enabled
    finally:
        dist.destroy_process_group()


def _edited(plan: Plan, pieces: list[tuple[str, ...]]) -> Plan:
    stages = tuple(dataclasses.replace(st, pieces=p) for st, p in zip(plan.stages, pieces))
    return dataclasses.replace(plan, stages=stages)


def _refusal(capsys, tmp_path, plan: Plan) -> str:
    path = tmp_path / "edited.json"
    plan.save(path)
    code = main(["export", str(path), "--torchtitan", str(tmp_path / "job"), "--torch-csv", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.json"], "nothing written on error"
    return err


def test_stages_cut_inside_a_layer_are_refused(exported, capsys, tmp_path):
    plan, _ = exported["llama3"]
    pieces = [st.pieces for st in plan.stages]
    k = next(k for k, p in enumerate(pieces) if any(q.startswith("layers.") for q in p))
    last = [p for p in pieces[k] if p.startswith("layers.")][-1]
    pieces[k] = tuple(p for p in pieces[k] if p != last) + (f"{last}.attention", f"{last}.feed_forward")
    err = _refusal(capsys, tmp_path, _edited(plan, pieces))
    assert "cut inside torchtitan modules" in err and f"{last}.attention" in err and "--leaf" in err


def test_a_plan_missing_a_layer_of_the_flavor_is_refused(exported, capsys, tmp_path):
    plan, _ = exported["llama3"]
    pieces = [st.pieces for st in plan.stages]
    k = max(range(len(pieces)), key=lambda k: len(pieces[k]))
    dropped = pieces[k][0]
    pieces[k] = pieces[k][1:]
    err = _refusal(capsys, tmp_path, _edited(plan, pieces))
    assert f"hold none of ['{dropped}']" in err and "drop layers=" in err


def test_stages_out_of_model_order_are_refused(exported, capsys, tmp_path):
    plan, _ = exported["llama3"]
    pieces = [st.pieces for st in plan.stages]
    pieces[1], pieces[2] = pieces[2], pieces[1]
    err = _refusal(capsys, tmp_path, _edited(plan, pieces))
    assert "not the model's" in err and "contiguous" in err


def test_activation_checkpoint_mode_reads_the_plans_recompute_technique():
    from parplan.runtime.torchtitan_export import activation_checkpoint_mode

    def with_recompute(mode):
        return types.SimpleNamespace(techniques=types.SimpleNamespace(recompute=mode))

    assert activation_checkpoint_mode(types.SimpleNamespace()) == "none"
    assert [activation_checkpoint_mode(with_recompute(m)) for m in ("selective", "full")] == ["selective", "full"]
    with pytest.raises(ParplanError, match="'sometimes' has no torchtitan equivalent"):
        activation_checkpoint_mode(with_recompute("sometimes"))


def test_a_titan_spec_without_the_extra_names_it(monkeypatch):
    from parplan.zoo import load_model

    monkeypatch.setitem(sys.modules, "torchtitan", None)  # import torchtitan now raises ImportError
    with pytest.raises(ParplanError, match=r"pip install 'parplan\[torchtitan\]'"):
        load_model("titan:llama3:debugmodel", batch=1, seq=8)


# ---- the titan: zoo specs ------------------------------------------------------------------
def test_traced_module_paths_are_torchtitans_fqns(titan):
    from parplan.trace import trace
    from parplan.zoo import load_model
    from parplan.zoo.torchtitan import flavor_fqns, model_fqns

    zoo = load_model("titan:llama3:debugmodel", batch=2, seq=16)
    fqns = flavor_fqns("llama3", "debugmodel")
    assert fqns == ("tok_embeddings", *(f"layers.{k}" for k in range(6)), "norm", "lm_head")
    assert model_fqns(zoo.model) == fqns
    traced = trace(zoo.model, zoo.example_inputs)
    owners = {n.module_path for n in traced.nodes if n.params}
    assert {p if not p.startswith("layers.") else ".".join(p.split(".")[:2]) for p in owners} == set(fqns)
    # torchtitan's parameter names, unchanged by the tracing stand-ins
    with __import__("torch").device("meta"):
        theirs = {n for n, _ in titan.models.llama3.model_registry("debugmodel").model.build().named_parameters()}
    assert {n for n, _ in zoo.model.named_parameters()} == theirs


def test_deepseek_experts_are_costed_at_expected_load(titan):
    """Routed experts: 3 GEMMs of [n, D] × [D, F] per expert, n = ceil(T·k / E) tokens each."""
    import math

    from parplan.trace import trace
    from parplan.zoo import load_model

    batch, seq = 3, 20  # T = 60 tokens: n = ceil(60 · 3 / 8) = 23, not a divisor of anything
    zoo = load_model("titan:deepseek_v3:debugmodel", batch=batch, seq=seq)
    traced = trace(zoo.model, zoo.example_inputs)
    layers = {m.path: m for m in traced.moe_layers}
    assert sorted(layers) == [f"layers.{k}.moe" for k in range(1, 6)]  # the first layer is dense
    moe = layers["layers.1.moe"]
    assert (moe.experts, moe.top_k, moe.tokens) == (8, 3, batch * seq)
    n = math.ceil(batch * seq * 3 / 8)
    routed = [node for node in traced.nodes if set(node.params) & set(moe.expert_params)]
    flops = 3 * 2 * 8 * n * 256 * 256  # dim 256, moe hidden 256
    assert sum(node.forward_flops for node in routed) == flops
    # the weights are parameters of their GEMMs, so the weight gradient is costed too
    assert sum(node.backward_weight_flops for node in routed) == sum(node.backward_input_flops for node in routed) == flops


def test_titan_spec_options(titan):
    from parplan.zoo import load_model
    from parplan.zoo.torchtitan import model_fqns

    short = load_model("titan:qwen3:debugmodel,layers=2,dtype=float32", batch=1, seq=8)
    assert model_fqns(short.model)[1:3] == ("layers.0", "layers.1") and len(model_fqns(short.model)) == 5
    assert {p.dtype for p in short.model.parameters()} == {__import__("torch").float32}
    for spec, phrase in [("titan:llama3:debugmodel,layers=9", "give 1 … 6"),
                         ("titan:llama3:huge", "has no config function 'llama3_huge'; flavors:"),
                         ("titan:llama9:debugmodel", "torchtitan has no model 'llama9'"),
                         ("titan:llama3:debugmodel,heads=2", "option 'heads' is unknown")]:
        with pytest.raises(ParplanError, match=phrase):
            load_model(spec, batch=1, seq=8)


# ---- fixed configurations: one rank, other placements, inference ---------------------------
def _fixed_plan(schedule, pieces, spec="titan:llama3:debugmodel"):
    from parplan.planner.api import plan_from_schedule
    from parplan.schedule.costs import PipelineCosts
    from parplan.zoo import load_model

    zoo = load_model(spec, batch=4, seq=16)
    return plan_from_schedule(model=zoo.model, model_spec=spec, batch=4, seq=16,
                              schedule=schedule, model_stage_pieces=pieces,
                              costs=PipelineCosts.uniform(schedule.num_stages), time_unit="unit", memory_unit="unit")


def test_a_one_rank_plan_exports_without_pipeline_arguments(titan, tmp_path):
    from torchtitan.config.manager import ConfigManager

    from parplan.baselines import build_baseline
    from parplan.runtime.torchtitan_export import export_files
    from parplan.zoo.torchtitan import flavor_fqns

    plan = _fixed_plan(build_baseline("1f1b", 1, 2), [flavor_fqns("llama3", "debugmodel")])
    files = export_files(plan, tmp_path)
    assert sorted(Path(p).name for p in files) == ["README.md", "overrides.txt"]
    args = files[str(tmp_path.resolve() / "overrides.txt")].split()
    assert not [a for a in args if "pipeline_parallel_schedule" in a or "module_fqns" in a]
    config = ConfigManager().parse_args(args)
    assert config.parallelism.pipeline_parallel_degree == 1 and config.training.local_batch_size == 4


def test_placements_torchtitan_cannot_name_and_inference_plans_are_refused(titan):
    from parplan.baselines import build_baseline
    from parplan.runtime.torchtitan_export import schedule_name, titan_job
    from parplan.zoo.torchtitan import flavor_fqns

    blocked = types.SimpleNamespace(num_ranks=2, num_stages=4, stage_to_rank=(0, 0, 1, 1))
    with pytest.raises(ParplanError, match="--placement chain, loop or v"):
        schedule_name(blocked)
    fqns = flavor_fqns("llama3", "debugmodel")
    plan = _fixed_plan(build_baseline("1f1b", 2, 4), [fqns[:5], fqns[5:]])
    assert "--parallelism.pipeline_parallel_schedule=1F1B" in titan_job(plan, "s.csv").overrides
    with pytest.raises(ParplanError, match="inference plan"):
        titan_job(dataclasses.replace(plan, mode="inference"), "s.csv")


def test_tied_weights_with_pipeline_and_cut_down_models_are_refused(titan):
    """torchtitan 0.3 refuses weight tying under PP (qwen3's debug flavour ties them), and
    builds every layer of a flavour (a layers= plan predicted another model)."""
    from parplan.baselines import build_baseline
    from parplan.runtime.torchtitan_export import titan_job
    from parplan.zoo.torchtitan import flavor_fqns

    fqns = flavor_fqns("qwen3", "debugmodel")
    tied = _fixed_plan(build_baseline("1f1b", 2, 4), [fqns[:5], fqns[5:]], spec="titan:qwen3:debugmodel")
    with pytest.raises(ParplanError, match=r"ties its embedding and output weights .* --pp 1"):
        titan_job(tied, "s.csv")
    whole = _fixed_plan(build_baseline("1f1b", 1, 2), [fqns], spec="titan:qwen3:debugmodel")
    assert titan_job(whole, "s.csv").world_size == 1  # one rank: tying is torchtitan's to handle
    short = flavor_fqns("llama3", "debugmodel")[:3] + ("norm", "lm_head")
    cut = _fixed_plan(build_baseline("1f1b", 1, 2), [short], spec="titan:llama3:debugmodel,layers=2")
    with pytest.raises(ParplanError, match=r"2 layers of the flavor; .*\(drop layers=\)"):
        titan_job(cut, "s.csv")
