"""`parplan calibrate`: measure this machine and write a hardware profile (parplan.cost.calibrate).

Two forms:
  parplan calibrate [--device cpu|cuda] [--quick] [--threads N] [--out FILE.yaml] [--name NAME]
      the device sweep -> FILE.yaml (kind: gpu) and FILE.records.jsonl (the raw records);
  parplan calibrate --links --nproc N --gpu GPU [--backend gloo|nccl] [--quick] [--out FILE.yaml]
      collectives between N local ranks under torchrun -> FILE.yaml (kind: cluster: one node of
      N GPUs described by GPU, the measured link) and FILE.records.jsonl.
Every check that needs no measurement runs first; the profile is loaded back by the
profile loader before anything is written, and both files are written together at the
end, so a failing run leaves no file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from parplan.cli.args import positive_int, seconds
from parplan.cli.progress import ProgressDisplay, name_written
from parplan.errors import ParplanError
from parplan.io import check_writable, write_outputs

__all__ = ["add_parsers"]

# --share-cores: beyond this many ranks per core a run is a scheduler test, not a pipeline
MAX_RANKS_PER_CORE = 4


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="measure this machine (CPU or CUDA GPU, or its links) and write a hardware profile",
        description="Time GEMMs, SDPA, norms, pointwise ops, copies and whole GPT blocks on the local device, fit "
                    "the cost model's constants and write a GPU profile (with the raw records beside it). With "
                    "--links, time send/recv and collectives between local ranks and write a cluster profile.")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="device to calibrate (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--quick", action="store_true", help="the reduced sweep (CI: under a minute on 2 CPU cores)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads torch uses while measuring (default: torch's); `parplan run` gives each rank "
                        "1, so calibrate with --threads 1 to plan CPU runs")
    p.add_argument("--out", default=None, metavar="FILE.yaml",
                   help="profile to write (default NAME.yaml); the raw records go to FILE.records.jsonl")
    p.add_argument("--name", default=None, help="profile name (default calibrated-<device>, or <gpu>-xN with --links)")
    p.add_argument("--links", action="store_true", help="measure the links between --nproc local ranks instead")
    p.add_argument("--nproc", type=positive_int, default=None, help="local ranks for --links (>= 2)")
    p.add_argument("--backend", choices=("gloo", "nccl"), default=None,
                   help="--links backend (default: nccl on CUDA, gloo on CPU)")
    p.add_argument("--gpu", default=None, metavar="PROFILE",
                   help="--links: the GPU profile (name or .yaml, e.g. one parplan calibrate wrote) the cluster's "
                        "ranks run on")
    p.add_argument("--timeout", type=seconds, default=None, help="--links: torchrun job limit in seconds (default 300)")
    p.add_argument("--share-cores", action="store_true",
                   help="--links on a CPU: allow --nproc above the core count; the ranks then share the cores, and "
                        "the cluster's measured compute_share (about cores / ranks) says so")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run_calibrate)


def _outputs(out: str) -> tuple[str, str]:
    if Path(out).suffix not in (".yaml", ".yml"):
        raise ParplanError(f"--out {out!r} must end in .yaml (or .yml): profile files are found by that suffix; "
                           f"give e.g. {Path(out).stem or 'profile'}.yaml")
    check_writable(out, "--out")
    records = str(Path(out).with_suffix(".records.jsonl"))
    check_writable(records, "--out")
    return out, records


def _display(args):
    from parplan.planner.events import Phase, PlanProgress, Step

    display = ProgressDisplay(quiet=args.quiet)

    def report(group: str, message: str | None, phase=Phase.MEASURE) -> None:
        step = Step.BEGIN if message is None else Step.END
        display(PlanProgress(phase=phase, step=step, subject=group, message=message or ""))
    return display, report


def _checked_yaml(data: dict, header: list[str], out: str) -> str:
    """The profile's YAML text, once the profile loader accepts it from the folder `out` lies in
    (where a cluster's relative GPU path points); a profile that would not load is a bug here."""
    import yaml

    from parplan.cost.hardware import load_profile_file

    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False, width=120)
    fd, probe = tempfile.mkstemp(dir=Path(out).resolve().parent, prefix=f".{Path(out).stem}-check-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        load_profile_file(Path(probe))
    except ParplanError as err:  # calibrate wrote something its own loader refuses: a bug, exit 1
        raise RuntimeError(f"the calibrated profile does not load: {err}") from None
    finally:
        os.unlink(probe)
    return text


def _records_text(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def run_calibrate(args) -> int:
    import torch

    from parplan.cost.calibrate import check_device, default_name, local_device_name

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device)
    if args.links:
        return _run_links(args, device)
    for flag, value in (("--nproc", args.nproc), ("--backend", args.backend), ("--gpu", args.gpu),
                        ("--timeout", args.timeout), ("--share-cores", args.share_cores or None)):
        if value is not None:
            raise ParplanError(f"{flag} applies to --links only; add --links to measure links, or drop {flag}")
    if args.threads is not None and device != "cpu":
        raise ParplanError("--threads sets CPU threads; it applies to --device cpu only")
    name = args.name or default_name(local_device_name(device))
    out, records_path = _outputs(args.out or f"{name}.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return _run_device(args, device, name, out, records_path)
    finally:  # `main` may run in-process (tests, notebooks): leave torch as it was
        torch.set_num_threads(threads)


def _command(args, device: str) -> str:
    """The run's command line, rebuilt from the parsed flags (what the sources cite)."""
    parts = ["parplan calibrate", f"--device {device}"]
    parts += ["--quick"] if args.quick else []
    parts += [f"--threads {args.threads}"] if args.threads else []
    if args.links:
        parts += [f"--links --nproc {args.nproc} --backend {args.backend} --gpu {args.gpu}"]
        parts += ["--share-cores"] if args.share_cores else []
    return " ".join(parts)


def _run_device(args, device: str, name: str, out: str, records_path: str) -> int:
    from parplan.cost.calibrate import RunInfo, fit_profile, measure_device, sweep_for
    from parplan.planner.events import Phase

    run = RunInfo.here(device, command=_command(args, device), records_file=Path(records_path).name)
    display, report = _display(args)
    with display:
        calibration = measure_device(device, sweep_for(device, quick=args.quick), block=_gpt_block, progress=report)
        report("cost model", None, Phase.FIT)
        data, summary = fit_profile(list(calibration.records), run, name=name, skipped=calibration.skipped,
                                    block=_gpt_block)
        report("cost model", _error_line(summary), Phase.FIT)
    header = [f"Calibrated by parplan calibrate: {run.text}.",
              f"Raw records: {run.records_file} (re-fit with parplan.cost.calibrate.fit_profile).",
              f"Fit |error| by category: {_error_line(summary)}."]
    header += [f"Not measured: {line}" for line in calibration.skipped]
    text = _checked_yaml(data, header, out)
    write_outputs({out: text, records_path: _records_text(calibration.records)})
    name_written([out, records_path])
    _print_device(data, summary, calibration.skipped)
    return 0


def _gpt_block(hidden: int, heads: int, dtype: str):
    """The zoo's GPT block: what `shared/calibration/h100/blocks.jsonl` timed."""
    from parplan.zoo.gpt import Block, GPTConfig

    return Block(GPTConfig(hidden=hidden, heads=heads, dtype=dtype))


def _error_line(summary: dict) -> str:
    return ", ".join(f"{k} median {v['median']:.0%} max {v['max']:.0%} ({v['count']})"
                     for k, v in summary.items() if v)


def _print_device(data: dict, summary: dict, skipped) -> None:
    from parplan.cli.args import format_columns

    rows = []
    for key, value in data.items():
        if isinstance(value, dict) and "value" not in value:
            rows += [[f"{key}.{k}", f"{v['value']:.4g}", v["unit"]] for k, v in value.items()]
        elif isinstance(value, dict):
            rows.append([key, f"{value['value']:.4g}", value["unit"]])
    print(f"profile {data['name']} ({data['device_names'][0]})")
    print("\n".join(format_columns(["constant", "value", "unit"], rows)))
    print(f"fit |error|: {_error_line(summary)}")
    for line in skipped:
        print(f"not measured: {line}")


@dataclass(frozen=True, kw_only=True, slots=True)
class _Runtime:
    constants: dict  # YAML entries of the node group: action_overhead, compute_share
    notes: list[str]  # header lines: what was measured beside them


def _runtime_constants(args, source: str, report) -> _Runtime:
    """What `parplan run` adds on these ranks, measured (parplan.runtime.calibrate_runtime): on a
    CPU the share of a core each rank computes with when all compute at once, and the runtime's
    per-action overhead (a measured action minus its bare compute at that share)."""
    from parplan.runtime.calibrate_runtime import (PROBE_MODEL, SHARE_WORKLOAD, measure_compute_share,
                                                   measure_runtime_overhead)

    constants, share = {}, 1.0
    if args.backend == "gloo":  # CPU ranks: NCCL runs one rank per GPU
        report(f"compute share x{args.nproc}", None)
        share = measure_compute_share(args.nproc, timeout_s=args.timeout or 300.0)
        cores = os.cpu_count() or 1
        report(f"compute share x{args.nproc}", f"{share:.3f} of a lone rank's rate ({cores} cores)")
        constants["compute_share"] = {
            "value": float(f"{share:.4g}"), "unit": "fraction",
            "source": f"measured: a GPT block's forward + backward {SHARE_WORKLOAD} on one thread, alone and in "
                      f"{args.nproc} processes at once on {cores} CPU cores (os.cpu_count): the lone time over the "
                      f"median together; {source}"}
    report(f"runtime x{args.nproc}", None)
    try:
        measured = measure_runtime_overhead(nproc=args.nproc, steps=6, compute_share=share,
                                            timeout_s=args.timeout or 300.0)
    except ParplanError as err:  # not measured: leave the field out (default 0), say why
        report(f"runtime x{args.nproc}", f"not measured: {err}")
        return _Runtime(constants=constants, notes=[f"Not measured: action_overhead ({err})"])
    report(f"runtime x{args.nproc}", f"{measured.action_s * 1e6:.0f} us per action, "
                                     f"{measured.step_s * 1e3:.2f} ms per step")
    constants["action_overhead"] = {
        "value": float(f"{measured.action_s:.4g}"), "unit": "s",
        "source": f"measured: median over {measured.num_actions} actions of a ZB-H1 step of {PROBE_MODEL} under "
                  f"parplan run's runtime, minus each stage's bare compute (median {measured.bare_compute_s * 1e6:.0f} "
                  f"us) over the compute share; {source}"}
    notes = [f"Step fixed work (set-up, gradient reduction, barrier; measured, not charged): "
             f"{measured.step_s * 1e3:.3g} ms."]
    return _Runtime(constants=constants, notes=notes)


def _run_links(args, device: str) -> int:
    import torch

    from parplan.cost.calibrate import RunInfo
    from parplan.cost.hardware import load_gpu
    from parplan.planner.events import Phase
    from parplan.runtime.calibrate_links import fit_link, measure_links

    if args.nproc is None or args.nproc < 2:
        raise ParplanError(f"--links needs --nproc N with N >= 2 local ranks (got {args.nproc}): one rank has no link")
    if args.threads is not None:
        raise ParplanError("--threads applies to the device sweep; --links runs each rank on 1 thread, as "
                           "parplan run does")
    backend = args.backend or ("nccl" if device == "cuda" else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ParplanError("--backend nccl needs CUDA GPUs, but torch.cuda.is_available() is False; use "
                               "--backend gloo on a CPU")
        if args.nproc > torch.cuda.device_count():
            raise ParplanError(f"--nproc {args.nproc} is more than the {torch.cuda.device_count()} GPUs of this "
                               f"machine: NCCL runs one rank per GPU; give --nproc <= {torch.cuda.device_count()}")
    elif args.nproc > (os.cpu_count() or 1) and not args.share_cores:
        raise ParplanError(f"--nproc {args.nproc} is more than the {os.cpu_count()} CPU cores of this machine: ranks "
                           f"sharing a core time the scheduler, not the link; give --nproc <= {os.cpu_count()}, or "
                           f"--share-cores to plan runs that share them (compute_share, about cores / ranks)")
    if args.share_cores and backend != "gloo":
        raise ParplanError("--share-cores applies to CPU ranks (gloo); NCCL runs one rank per GPU")
    if args.share_cores and args.nproc > MAX_RANKS_PER_CORE * (os.cpu_count() or 1):
        raise ParplanError(f"--nproc {args.nproc} with --share-cores is more than {MAX_RANKS_PER_CORE} ranks per core "
                           f"on {os.cpu_count()} CPU cores; give --nproc <= {MAX_RANKS_PER_CORE * (os.cpu_count() or 1)}")
    if args.gpu is None:
        raise ParplanError("--links needs --gpu PROFILE: the GPU profile the cluster's ranks run on; calibrate "
                           "the device first (parplan calibrate --out dev.yaml) and pass --gpu dev.yaml")
    gpu = load_gpu(args.gpu)  # fails now on a bad profile, before any rank starts
    args.backend = backend
    name = args.name or f"{gpu.name}-x{args.nproc}"
    out, records_path = _outputs(args.out or f"{name}.yaml")

    run = RunInfo.here(device, command=_command(args, device), records_file=Path(records_path).name)
    if device == "cpu":
        run = replace(run, threads=1)  # what each rank ran on (measure_links sets OMP_NUM_THREADS=1)
    source = f"{backend}, {args.nproc} local ranks, {run.text}"
    display, report = _display(args)
    with display:
        report(f"links {backend} x{args.nproc}", None)
        records, skipped = measure_links(nproc=args.nproc, backend=backend, quick=args.quick,
                                        timeout_s=args.timeout or 300.0)
        ops = sorted({r["op"] for r in records})
        report(f"links {backend} x{args.nproc}", f"{len(records)} records ({', '.join(ops)})"
               + (f"; not measured: {'; '.join(skipped)}" if skipped else ""))
        report("link fit", None, Phase.FIT)
        link, summary = fit_link(records, ranks=args.nproc, source=source)
        report("link fit", f"bandwidth {link['bandwidth']['value']:.3g} B/s, latency {link['latency']['value']:.3g} s",
               Phase.FIT)
        runtime = _runtime_constants(args, source, report)
    gpu_ref = args.gpu
    if Path(gpu_ref).suffix in (".yaml", ".yml"):  # stored beside-relative, so the two files move together
        gpu_ref = os.path.relpath(Path(gpu_ref).resolve(), Path(out).resolve().parent)
    data = {"kind": "cluster", "name": name,
            "groups": [{"gpu": gpu_ref, "nodes": 1, "gpus_per_node": args.nproc, "intra_node": link,
                        **runtime.constants}]}
    header = [f"Calibrated by parplan calibrate --links: {source}.",
              "One node: no inter-node link (none was measured; no rank pair crosses nodes).",
              f"Raw records: {run.records_file}. Per collective (least squares latency + bytes / bandwidth): "
              f"{json.dumps(summary)}"]
    header += runtime.notes
    header += [f"Not measured: {line}" for line in skipped]
    text = _checked_yaml(data, header, out)
    write_outputs({out: text, records_path: _records_text(records)})
    name_written([out, records_path])
    print(f"cluster {name}: {args.nproc} x {gpu.name}, link bandwidth {link['bandwidth']['value']:.4g} B/s, "
          f"latency {link['latency']['value']:.4g} s"
          + (f", all-to-all {link['all_to_all_bandwidth']['value']:.4g} B/s" if "all_to_all_bandwidth" in link else ""))
    for op, fitted in summary.items():
        print(f"  {op}: {json.dumps(fitted)}")
    for line in runtime.notes:
        print(f"  {line}")
    for line in skipped:
        print(f"not measured: {line}")
    return 0
