"""From a Llama-shaped model to the per-stage costs a pipeline planner consumes.

    python examples/stage_costs.py
"""

from parplan.cost import group_costs, load_cluster, pipeline_costs, split_contiguous
from parplan.trace import trace
from parplan.zoo import build

STAGES = 4
z = build("llama", batch=1, seq=2048, hidden=2048, heads=16, kv_heads=4, layers=8, intermediate=5632)
t = trace(z.model, z.example_inputs)
cluster = load_cluster("h100x8")
gpu = cluster.gpu(0)
groups = split_contiguous(t, STAGES, gpu)
stages = group_costs(t, groups, gpu, link=cluster.link(0, 1))
costs = pipeline_costs(stages, gpu)
for s, g in enumerate(stages):
    print(f"stage {s}: {g.num_ops:4d} ops  F {g.forward_s * 1e3:6.2f} ms  I {g.backward_input_s * 1e3:6.2f} ms  "
          f"W {g.backward_weight_s * 1e3:6.2f} ms  act {g.activation_bytes / 2**20:7.1f} MiB  "
          f"params {g.param_bytes / 2**20:7.1f} MiB  send {g.boundary_bytes / 2**20:5.1f} MiB in {g.transfer_s * 1e6:5.1f} us")
totals = [f + i + w for f, i, w in zip(costs.forward, costs.backward_input, costs.backward_weight)]
assert costs.num_stages == STAGES and max(totals) < 1.5 * min(totals), totals
assert costs.transfer[-1] == 0 and all(x > 0 for x in costs.transfer[:-1])
print(f"overlap ratio {costs.overlap_ratio}; stage time spread {max(totals) / min(totals):.2f}x")
