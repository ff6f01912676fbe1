"""Trace a GPT-2-sized model on the meta device and check its FLOPs against 6·N·T.

    python examples/trace_gpt.py
"""

from parplan.trace import trace
from parplan.zoo import build

BATCH, SEQ = 4, 1024

z = build("gpt", batch=BATCH, seq=SEQ)  # GPT-2 small: 12 layers, hidden 768, vocab 50257
t = trace(z.model, z.example_inputs)
tokens = BATCH * SEQ
cfg = z.config
non_embedding = 12 * cfg.layers * cfg.hidden**2  # the block linears' weights
# forward = 2 FLOPs per weight per token (+ the tied LM head) + causal attention
expected_forward = 2 * tokens * (non_embedding + cfg.hidden * cfg.vocab) + cfg.layers * 4 * BATCH * SEQ * (SEQ + 1) // 2 * cfg.hidden
assert abs(t.forward_flops - expected_forward) / expected_forward < 0.01, (t.forward_flops, expected_forward)
total = t.forward_flops + t.backward_input_flops + t.backward_weight_flops
print(f"{t.capture}: {len(t.nodes)} operators, {t.param_count / 1e6:.1f} M parameters, "
      f"{total / 1e12:.2f} TFLOP per step ({total / (6 * t.param_count * tokens):.2f} x 6NT), "
      f"{len(t.blocks[0].instances)} repeated {t.blocks[0].module_class} blocks")
