"""Hardware profiles: GPUs and clusters, loaded from YAML and validated on load.

Every constant in a profile is written `{value: ..., unit: ..., source: ...}`; loading
checks the unit against the one the field expects, so a profile in GB/s where B/s is
meant fails loudly instead of being off by 1e9.

Profiles ship inside the package (`parplan/cost/profiles/`, package data, so a
non-editable install finds them); the repository's `hardware_profiles/` is a link to that
folder. `load_gpu`/`load_cluster` accept a bundled name (`h100-sxm`) or a path to a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parplan.errors import ParplanError

__all__ = [
    "Constant",
    "GPUProfile",
    "Efficiency",
    "LinkProfile",
    "NodeGroup",
    "ClusterProfile",
    "PROFILE_DIR",
    "available_profiles",
    "load_gpu",
    "load_cluster",
    "load_profile_file",
]

PROFILE_DIR = Path(__file__).with_name("profiles")


@dataclass(frozen=True, kw_only=True, slots=True)
class Constant:
    value: float
    unit: str
    source: str


def _constant(data: dict, key: str, unit: str, where: str, *, allow_zero: bool = False) -> Constant:
    path = f"{where}.{key}"
    if key not in data:
        raise ParplanError(f"{path} is missing; give it as {{value: NUMBER, unit: {unit}, source: TEXT}}")
    raw = data[key]
    if not isinstance(raw, dict):
        raise ParplanError(f"{path} = {raw!r} has no unit or source; write {{value: {raw}, unit: {unit}, source: TEXT}}")
    value, got_unit, source = raw.get("value"), raw.get("unit"), raw.get("source")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise ParplanError(f"{path}.value = {value!r} is not a finite number (unit {unit})")
    if value < 0 or (value == 0 and not allow_zero):
        raise ParplanError(f"{path}.value = {value} must be {'>= 0' if allow_zero else '> 0'} (unit {unit})")
    if got_unit != unit:
        raise ParplanError(f"{path}.unit is {got_unit!r} but the expected unit is {unit!r}; convert the value to {unit}")
    if not isinstance(source, str) or not source.strip():
        raise ParplanError(f"{path}.source is missing; name the datasheet or measurement the value comes from")
    return Constant(value=float(value), unit=unit, source=source)


def _fraction(data: dict, key: str, where: str, *, upper: float = 1.0, allow_zero: bool = False) -> float:
    c = _constant(data, key, "fraction", where, allow_zero=allow_zero)
    if c.value > upper:
        raise ParplanError(f"{where}.{key}.value = {c.value} must be <= {upper} (a fraction)")
    return c.value


@dataclass(frozen=True, kw_only=True, slots=True)
class Efficiency:
    """Fitted parameters of the cost model (see docs/cost-model.md for each formula)."""

    gemm: float  # achieved fraction of peak on large GEMMs
    gemm_backward: float  # the same for the backward's dgrad and wgrad GEMMs (transposed operands)
    gemm_unaligned: float  # extra factor when K or N is not a multiple of 16 bytes
    attention_forward: float
    attention_backward: float
    attention_causal: float  # extra factor for causal masks (diagonal tiles are half-empty)
    memory: float  # achieved fraction of HBM bandwidth on streaming kernels
    transfer_contention: float  # 0: a transfer overlaps compute for free; 1: fully serialised
    fb_overlap_ratio: float  # overlapped F&B cell lasts ratio x (F + B)


@dataclass(frozen=True, kw_only=True, slots=True)
class GPUProfile:
    name: str
    device_names: tuple[str, ...]
    peak_flops: dict[str, float]  # by dtype name, FLOP/s, dense
    hbm_bytes: float
    hbm_bandwidth: float  # B/s
    launch_floor_s: float  # CPU time to dispatch one eager operator's forward
    backward_floor_s: float  # CPU time of one autograd node (per kernel-launching phase)
    backward_call_s: float  # starting one autograd backward call, paid once per call
    view_floor_s: float  # CPU time of a view's forward (no kernel, still a dispatched call)
    gemm_floor_s: float  # GPU time a GEMM kernel takes beyond its FLOPs (ramp, tail wave)
    attention_seq_half: float  # key length at which SDPA reaches half its peak efficiency
    attention_causal_tile: float  # keys per query row wasted on diagonal tiles under a causal mask
    efficiency: Efficiency
    constants: dict[str, Constant] = field(repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if "bfloat16" not in self.peak_flops or "float32" not in self.peak_flops:
            raise ParplanError(f"gpu {self.name}: peak_flops needs bfloat16 and float32 entries")

    def peak(self, dtype: str) -> float:
        # fp16 runs on the same tensor cores as bf16
        return self.peak_flops.get(dtype, self.peak_flops["bfloat16" if dtype == "float16" else "float32"])


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkProfile:
    name: str
    bandwidth: float  # B/s, one direction
    latency_s: float
    efficiency: float  # achieved fraction of bandwidth for large messages
    # B/s one GPU achieves sending an MoE dispatch/combine all-to-all over this link (DeepEP-style
    # kernels); None when the profile gives none, and then expert parallelism over it is refused
    a2a_bandwidth: float | None = None

    def __post_init__(self) -> None:
        if self.bandwidth <= 0 or self.latency_s < 0 or not 0 < self.efficiency <= 1:
            raise ParplanError(f"link {self.name}: bandwidth > 0, latency >= 0 and 0 < efficiency <= 1 are required")


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeGroup:
    gpu: GPUProfile
    nodes: int
    gpus_per_node: int
    intra_node: LinkProfile
    # What running a pipeline on these ranks adds to the device's compute (optional in the
    # YAML; the defaults add nothing, as on a GPU whose runtime overhead hides under its
    # queued kernels). `parplan calibrate --links` measures both on a CPU (docs/cost-model.md).
    action_overhead_s: float = 0.0  # the pipeline runtime's seconds per action (F, I, W) beyond its compute
    compute_share: float = 1.0  # fraction of one device each rank computes with (C cores / N ranks)

    def __post_init__(self) -> None:
        if self.action_overhead_s < 0 or not 0 < self.compute_share <= 1:
            raise ParplanError(f"node group of {self.gpu.name}: action_overhead >= 0 s and 0 < compute_share <= 1 "
                               f"are required (got {self.action_overhead_s}, {self.compute_share})")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterProfile:
    name: str
    groups: tuple[NodeGroup, ...]
    inter_node: LinkProfile
    # compute runs 1 / (1 + this) slower while an all-to-all runs beside it (its kernels take
    # SMs: DeepSeek-V3 gives 20 of 132); None when the profile gives none
    a2a_compute_slowdown: float | None = None

    @property
    def num_gpus(self) -> int:
        return sum(g.nodes * g.gpus_per_node for g in self.groups)

    def placement(self, rank: int) -> tuple[int, int]:
        """(group index, global node index) of `rank`; ranks fill nodes in order."""
        if not 0 <= rank < self.num_gpus:
            raise ParplanError(f"rank {rank} is outside cluster {self.name} (0..{self.num_gpus - 1})")
        node_base, rank_base = 0, 0
        for gi, g in enumerate(self.groups):
            size = g.nodes * g.gpus_per_node
            if rank < rank_base + size:
                return gi, node_base + (rank - rank_base) // g.gpus_per_node
            node_base += g.nodes
            rank_base += size
        raise AssertionError("unreachable: rank checked above")

    def gpu(self, rank: int) -> GPUProfile:
        return self.groups[self.placement(rank)[0]].gpu

    def group(self, rank: int) -> NodeGroup:
        return self.groups[self.placement(rank)[0]]

    def link(self, rank_a: int, rank_b: int) -> LinkProfile:
        ga, na = self.placement(rank_a)
        gb, nb = self.placement(rank_b)
        return self.groups[ga].intra_node if na == nb else self.inter_node


def _read_yaml(path: Path) -> dict:
    import yaml  # lazy: only profile loading needs it

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "it is not UTF-8 text"
        raise ParplanError(f"hardware profile file {str(path)!r} cannot be read: {reason}; "
                           f"give a readable YAML profile") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParplanError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParplanError(f"{path} must hold a mapping with kind: gpu or kind: cluster")
    return data


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ParplanError(f"hardware profile file {str(path)!r} does not exist")
        return path
    bundled = PROFILE_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise ParplanError(
            f"unknown hardware profile {str(name_or_path)!r}; known: {', '.join(available_profiles())} "
            f"(or give a path to a .yaml file)"
        )
    return bundled


def available_profiles() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))


def _parse_gpu(data: dict, where: str) -> GPUProfile:
    constants: dict[str, Constant] = {}
    peaks = data.get("peak_flops")
    if not isinstance(peaks, dict) or not peaks:
        raise ParplanError(f"{where}.peak_flops is missing; give bfloat16 and float32 entries in FLOP/s")
    peak_flops = {}
    for dtype in peaks:
        c = _constant(peaks, dtype, "FLOP/s", f"{where}.peak_flops")
        constants[f"peak_flops.{dtype}"] = c
        peak_flops[dtype] = c.value
    for key, unit in (("hbm_capacity", "bytes"), ("hbm_bandwidth", "B/s"), ("launch_floor", "s"), ("backward_floor", "s"),
                      ("backward_call", "s"), ("view_floor", "s"),
                      ("gemm_floor", "s"), ("attention_seq_half", "tokens"),
                      ("attention_causal_tile", "tokens")):
        constants[key] = _constant(data, key, unit, where)
    eff = data.get("efficiency")
    if not isinstance(eff, dict):
        raise ParplanError(f"{where}.efficiency is missing; it holds the fitted cost-model parameters")
    ew = f"{where}.efficiency"
    efficiency = Efficiency(
        gemm=_fraction(eff, "gemm", ew),
        gemm_backward=_fraction(eff, "gemm_backward", ew),
        gemm_unaligned=_fraction(eff, "gemm_unaligned", ew),
        attention_forward=_fraction(eff, "attention_forward", ew),
        attention_backward=_fraction(eff, "attention_backward", ew),
        attention_causal=_fraction(eff, "attention_causal", ew),
        memory=_fraction(eff, "memory", ew),
        # 0 is a measurement too: a transfer beside compute that costs the compute nothing
        transfer_contention=_fraction(eff, "transfer_contention", ew, allow_zero=True),
        fb_overlap_ratio=_constant(eff, "fb_overlap_ratio", "ratio", ew).value,
    )
    for key in eff:
        constants[f"efficiency.{key}"] = Constant(value=float(eff[key]["value"]), unit=eff[key]["unit"], source=eff[key]["source"])
    names = data.get("device_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ParplanError(f"{where}.device_names must be a list of torch.cuda.get_device_name() strings")
    return GPUProfile(
        name=str(data.get("name", where)),
        device_names=tuple(names),
        peak_flops=peak_flops,
        hbm_bytes=constants["hbm_capacity"].value,
        hbm_bandwidth=constants["hbm_bandwidth"].value,
        launch_floor_s=constants["launch_floor"].value,
        backward_floor_s=constants["backward_floor"].value,
        backward_call_s=constants["backward_call"].value,
        view_floor_s=constants["view_floor"].value,
        gemm_floor_s=constants["gemm_floor"].value,
        attention_seq_half=constants["attention_seq_half"].value,
        attention_causal_tile=constants["attention_causal_tile"].value,
        efficiency=efficiency,
        constants=constants,
    )


def _parse_link(data: Any, where: str) -> LinkProfile:
    if not isinstance(data, dict):
        raise ParplanError(f"{where} must be a mapping with bandwidth (B/s), latency (s) and efficiency (fraction)")
    return LinkProfile(
        name=str(data.get("name", where)),
        bandwidth=_constant(data, "bandwidth", "B/s", where).value,
        latency_s=_constant(data, "latency", "s", where, allow_zero=True).value,
        efficiency=_fraction(data, "efficiency", where),
        a2a_bandwidth=_constant(data, "all_to_all_bandwidth", "B/s", where).value
        if "all_to_all_bandwidth" in data else None,
    )


def load_profile_file(path: Path) -> GPUProfile | ClusterProfile:
    data = _read_yaml(path)
    kind = data.get("kind")
    where = path.stem
    if kind == "gpu":
        return _parse_gpu(data, where)
    if kind == "cluster":
        groups_raw = data.get("groups")
        if not isinstance(groups_raw, list) or not groups_raw:
            raise ParplanError(f"{where}.groups is missing; list node groups with gpu, nodes, gpus_per_node, intra_node")
        groups = []
        for i, g in enumerate(groups_raw):
            gw = f"{where}.groups[{i}]"
            if not isinstance(g, dict):
                raise ParplanError(f"{gw} = {g!r} must be a mapping with gpu, nodes, gpus_per_node, intra_node")
            for key in ("gpu", "nodes", "gpus_per_node", "intra_node"):
                if key not in g:
                    raise ParplanError(f"{gw}.{key} is missing")
            for key in ("nodes", "gpus_per_node"):
                if not isinstance(g[key], int) or g[key] < 1:
                    raise ParplanError(f"{gw}.{key} = {g[key]!r} must be a positive integer (a count)")
            if not isinstance(g["gpu"], str):
                raise ParplanError(f"{gw}.gpu = {g['gpu']!r} must name a GPU profile (e.g. h100-sxm) or a .yaml file")
            gpu = load_gpu(_beside(path, g["gpu"]))
            overhead = _constant(g, "action_overhead", "s", gw, allow_zero=True).value if "action_overhead" in g else 0.0
            share = _fraction(g, "compute_share", gw) if "compute_share" in g else 1.0
            groups.append(NodeGroup(gpu=gpu, nodes=g["nodes"], gpus_per_node=g["gpus_per_node"],
                                    intra_node=_parse_link(g["intra_node"], f"{gw}.intra_node"),
                                    action_overhead_s=overhead, compute_share=share))
        inter = data.get("inter_node")
        if inter is None and sum(g.nodes for g in groups) == 1:
            # one node: no rank pair crosses nodes, so no inter-node link is ever used (or measured)
            inter_node = groups[0].intra_node
        else:
            inter_node = _parse_link(inter, f"{where}.inter_node")
        slowdown = _constant(data, "all_to_all_compute_slowdown", "fraction", where, allow_zero=True).value \
            if "all_to_all_compute_slowdown" in data else None
        return ClusterProfile(name=str(data.get("name", where)), groups=tuple(groups),
                              inter_node=inter_node,
                              a2a_compute_slowdown=slowdown)
    raise ParplanError(f"{path}: kind = {kind!r}; expected kind: gpu or kind: cluster")


def _beside(cluster_file: Path, gpu: str) -> str | Path:
    """A cluster's `gpu:` entry: a relative .yaml path is looked up beside the cluster file
    first (a calibrated pair of files moves together), then from the working directory."""
    ref = Path(gpu)
    if ref.suffix in (".yaml", ".yml") and not ref.is_absolute() and (cluster_file.parent / ref).is_file():
        return cluster_file.parent / ref
    return gpu


def load_gpu(name_or_path: str | Path) -> GPUProfile:
    profile = load_profile_file(_resolve(name_or_path))
    if not isinstance(profile, GPUProfile):
        raise ParplanError(f"{name_or_path} is a cluster profile; a GPU profile (e.g. h100-sxm) is needed here")
    return profile


def load_cluster(name_or_path: str | Path) -> ClusterProfile:
    profile = load_profile_file(_resolve(name_or_path))
    if not isinstance(profile, ClusterProfile):
        raise ParplanError(f"{name_or_path} is a GPU profile; a cluster profile (e.g. h100x8) is needed here")
    return profile
