"""Tracing: from a PyTorch model to a costed operator DAG (`parplan.trace.trace`)."""

from __future__ import annotations

from parplan.trace.capture import UnknownOperatorWarning, trace
from parplan.trace.graph import AttentionShape, GemmShape, OpKind, OpNode, RepeatedBlock, TensorMeta, TracedGraph

__all__ = [
    "trace",
    "TracedGraph",
    "OpNode",
    "OpKind",
    "TensorMeta",
    "GemmShape",
    "AttentionShape",
    "RepeatedBlock",
    "UnknownOperatorWarning",
]
