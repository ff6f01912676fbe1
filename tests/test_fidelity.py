"""End to end: calibrate this CPU, plan with the profile, run under torchrun, compare (benchmarks/fidelity.py).

Slow (a full calibration, a links run and a torchrun job: ~3 minutes on 2 cores) and
timing-based, so it is `slow`; on a machine busy with other work the measured step says
nothing about the model, so it is skipped there rather than asserted loosely.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_calibrated_profile_predicts_executed_two_rank_steps(tmp_path):
    cores = os.cpu_count() or 1
    if cores < 2:
        pytest.skip("two one-thread ranks need two cores")
    if os.getloadavg()[0] > 0.5:
        pytest.skip(f"load average {os.getloadavg()[0]:.2f}: other work would be timed with the pipeline")
    out = tmp_path / "results.json"
    # the full sweep: the quick one's profile predicted these plans 1.8x slower than the full one's
    # (its blocks are smaller than the model's), which would make the bound below meaningless
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fidelity.py"), "--out", str(tmp_path),
                    "--ranks", "2", "--schedules", "zb-v", "dualpipev", "--steps", "4", "--json", str(out)],
                   check=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=900)
    data = json.loads(out.read_text())
    assert (tmp_path / "cpu.yaml").is_file() and (tmp_path / "cpu-x2.yaml").is_file()
    assert [r["plan_schedule"] for r in data["results"]] == ["zb-v", "dualpipev"]
    for r in data["results"]:
        # a regression bound, not the 15 %: on a quiet 2-core box these two measured
        # 1.11-1.23 x their prediction (docs/benchmarks.md, "Issue 18: fidelity on CPU/gloo")
        assert 0.75 < r["ratio"] < 1.35, r
        measured = [a for a in r["actions"] if a["measured_ms"] is not None and a["kind"] == "F"]
        assert measured and all(a["count"] > 0 for a in measured)
        # forwards, which PyTorch runs as planned (its first stage's I goes inside W): each within 1.5x
        assert all(0.67 < a["measured_ms"] / a["predicted_ms"] < 1.5 for a in measured), r
