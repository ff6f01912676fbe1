#!/usr/bin/env bash
# Measured vs analytic operator costs of the `gpt` zoo model on the local GPU.
#   OUT=out/gpu bash benchmarks/gpu_measure.sh
# Writes $OUT/env.json, $OUT/gpt_*.json (parplan profile --measure --json) and
# $OUT/summary.txt. Without a CUDA GPU the first profile exits 2 and so does this script.
set -euo pipefail
OUT=${OUT:-out/gpu_measure}
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' > "$OUT/env.json"
import json, importlib, torch
mods = {m: bool(importlib.util.find_spec(m)) for m in ("networkx", "yaml")}
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "modules": mods}))
PY
cat "$OUT/env.json"
# gpt_a: the [4, 2048, 2048] GPT block of overlap.jsonl; gpt_b: the [1, 2048, 4096] one.
python -m parplan.cli profile gpt:hidden=2048,heads=16,layers=2,max_positions=2048 --batch 4 --seq 2048 \
    --measure --json --depth 2 --cache "$OUT/cache.json" > "$OUT/gpt_a.json"
python -m parplan.cli profile gpt:hidden=4096,heads=32,layers=2,max_positions=2048 --batch 1 --seq 2048 \
    --measure --json --depth 2 --cache "$OUT/cache.json" > "$OUT/gpt_b.json"
python - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for name in ("gpt_a", "gpt_b"):
    r = json.loads((out / f"{name}.json").read_text())
    a, m = r["analytic_total"], r["total"]
    print(f"== {name}: {r['model']} batch {r['batch']} seq {r['seq']} on {r['device']}")
    for k in ("forward_s", "backward_input_s", "backward_weight_s"):
        print(f"  total {k:18s} analytic {a[k]*1e3:9.3f} ms  measured {m[k]*1e3:9.3f} ms  ratio {a[k]/m[k] if m[k] else float('nan'):.2f}")
    blk = r["modules"].get("h.1")
    if blk:
        print(f"  block h.1 measured F+I+W {sum(blk[k] for k in ('forward_s','backward_input_s','backward_weight_s'))*1e3:.3f} ms")
    for row in r["comparison"][:12]:
        f = row["forward_s"]; i = row["backward_input_s"]; w = row["backward_weight_s"]
        print(f"  {row['op']:30s} x{row['count']:<3d} {str(row['inputs'])[:60]:60s} F {f[0]*1e6:8.1f}/{f[1]*1e6:8.1f} us  I {i[0]*1e6:8.1f}/{i[1]*1e6:8.1f}  W {w[0]*1e6:8.1f}/{w[1]*1e6:8.1f}")
PY
