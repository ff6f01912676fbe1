"""Build a rank's `PipelineStage`s from a plan, plus the synthetic batch and loss the runtime uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from parplan.errors import ParplanError
from parplan.plan import model_fingerprint
from parplan.runtime.split import StageGraph, check_pieces, export_graph, split_graph

if TYPE_CHECKING:
    from parplan.plan import Plan
    from parplan.runtime.expert_parallel import ExpertGroup

__all__ = ["stage_graphs", "stages_for_rank", "synthetic_batch", "token_cross_entropy", "check_model", "stage_extras"]


def check_model(model: nn.Module, plan: "Plan") -> None:
    """Refuse a model whose structure differs from the one the plan was made for."""
    found = model_fingerprint(model)
    if found != plan.model.fingerprint:
        raise ParplanError(
            f"the model does not match the plan: the plan was made for {plan.model.spec!r} "
            f"({plan.model.num_parameters} parameters, fingerprint {plan.model.fingerprint[:19]}…) but this "
            f"model has {sum(p.numel() for p in model.parameters())} parameters (fingerprint {found[:19]}…). "
            f"Make a plan for this model"
        )


def _runnable(plan: "Plan") -> None:
    schedule = plan.schedule
    if len(schedule.chains) != 1:
        raise ParplanError(
            f"plan schedule {schedule.name!r} runs {len(schedule.chains)} chains (DualPipe's bidirectional "
            f"placement), which torch.distributed.pipelining cannot run; plan with 'dualpipev' instead"
        )


def _microbatch_inputs(example_inputs: tuple, plan: "Plan", device) -> tuple:
    size = plan.microbatch_size
    out = []
    for x in example_inputs:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] != plan.model.batch:
            raise ParplanError(
                f"example input of shape {tuple(getattr(x, 'shape', ()))} is not batched on dim 0 with the plan's "
                f"batch {plan.model.batch}; every model input must be a tensor split along dim 0"
            )
        out.append(torch.zeros((size, *x.shape[1:]), dtype=x.dtype, device=device))
    return tuple(out)


def stage_graphs(model: nn.Module, plan: "Plan", example_inputs: tuple) -> list[StageGraph]:
    """Every stage's module, split from the model traced at the micro-batch shape.

    `example_inputs` has the whole step's batch (`plan.model.batch`) on dim 0. The plan is
    checked first (one chain, the model's fingerprint, `check_pieces`), then the split's
    own rules apply (data-flow order; weights read by several stages are copied onto each,
    `StageGraph.tied`). On a meta-device model this checks a
    plan without weights, as `launch` does before it starts a process.
    """
    _runnable(plan)
    check_model(model, plan)
    pieces = [list(st.pieces) for st in plan.stages]
    check_pieces(model, pieces)
    device = next(iter(model.parameters())).device
    graph = export_graph(model, _microbatch_inputs(example_inputs, plan, device))
    return split_graph(graph, pieces)


def stage_extras(model: nn.Module, plan: "Plan", example_inputs: tuple) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(receives, passes) of each stage: the tensors it gets and the ones it hands on unchanged."""
    return [(g.inputs, g.passed_along) for g in stage_graphs(model, plan, example_inputs)]


def stages_for_rank(model: nn.Module, plan: "Plan", rank: int, *, example_inputs: tuple,
                    device: torch.device | str | None = None, group=None,
                    expert_group: "ExpertGroup | None" = None,
                    graphs: "list[StageGraph] | None" = None) -> list:
    """This rank's `torch.distributed.pipelining.PipelineStage`s, in stage order.

    Every rank traces the whole model (cheap next to training) and keeps its own stages;
    their parameters are the model's own tensors under the model's own names. `rank` is
    the pipeline rank and `group` its pipeline's process group (None: the world). With
    `expert_group`, each stage's MoEs are swapped for expert-parallel ones on that group
    (`to_expert_parallel`, after the split: the MoE is an opaque call there). `graphs`:
    this split's `stage_graphs`, when the caller already made them (it needs their tied
    weights: a tied weight's copies need `parplan.runtime.tied.sum_tied_grads` each step).
    """
    from torch.distributed.pipelining import PipelineStage

    from parplan.runtime.expert_parallel import to_expert_parallel

    if not 0 <= rank < plan.num_ranks:
        raise ParplanError(f"rank {rank} is outside the plan's ranks 0..{plan.num_ranks - 1}")
    graphs = graphs if graphs is not None else stage_graphs(model, plan, example_inputs)
    device = torch.device(device) if device is not None else next(iter(model.parameters())).device
    # Shapes are static (the graph was traced at the micro-batch shape), so every stage gets
    # its input/output metadata up front: PyTorch then skips its run-time shape inference,
    # which would feed uninitialised token ids to a later stage's embedding.
    stages = []
    for st in plan.stages_of_rank(rank):
        g = graphs[st.index]
        if expert_group is not None:
            to_expert_parallel(g.module, expert_group)
        cls = _full_backward_stage_class() if g.computes_on_tokens else PipelineStage
        stages.append(cls(g.module.to(device), st.index, plan.schedule.num_stages, device,
                          input_args=g.input_meta, output_args=g.output_meta, group=group))
    return stages


def _full_backward_stage_class():
    """A `PipelineStage` whose backward-input step also computes the weight gradients.

    PyTorch 2.13's split backward finds a stage's weights by walking back from its
    differentiable inputs; weights reached only through a non-float input (an embedding
    of token ids that an earlier stage passed along) are missed unless the stage is the
    first, and the W step then fails. Such stages run I as a full backward and W as a
    no-op: gradients stay exact; the W time moves into the I slot (see docs/runtime.md).
    """
    from torch.distributed.pipelining import PipelineStage

    class FullBackwardStage(PipelineStage):
        def backward_one_chunk(self, bwd_chunk_id, loss=None, full_backward=True, last_backward=False):
            return super().backward_one_chunk(bwd_chunk_id, loss=loss, full_backward=True, last_backward=last_backward)

        def backward_weight_one_chunk(self, bwd_chunk_id, last_backward=False):
            return None

    return FullBackwardStage


def synthetic_batch(model: nn.Module, example_inputs: tuple, *, seed: int) -> tuple[tuple, torch.Tensor]:
    """Reproducible inputs and next-token targets shaped like `example_inputs`.

    Integer inputs are token ids below the output's vocabulary; float inputs are N(0, 1);
    the target is shaped like the last token-id input (the output minus its vocabulary dim).
    """
    vocab = _vocabulary(model)
    generator = torch.Generator().manual_seed(seed)
    inputs = tuple(
        torch.randint(0, vocab, x.shape, generator=generator, dtype=x.dtype) if not x.is_floating_point()
        else torch.randn(x.shape, generator=generator, dtype=x.dtype)
        for x in example_inputs
    )
    tokens = [x for x in example_inputs if not x.is_floating_point()]
    if not tokens:
        raise ParplanError("the model takes no token-id input; the runtime's next-token loss needs one")
    target = torch.randint(0, vocab, tuple(tokens[-1].shape), generator=generator)
    return inputs, target


def _vocabulary(model: nn.Module) -> int:
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear):
        return head.out_features
    raise ParplanError(
        f"{type(model).__name__} has no `lm_head` Linear; parplan's runtime trains token models "
        f"(output [batch, seq, vocab]) with next-token cross-entropy"
    )


def token_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of one micro-batch (float32 for a stable reference)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
