"""Bound propagation engine: IBP, CROWN (fast and dense paths) and CROWN-IBP on torch modules,
over an open operator protocol (:mod:`certify.bounds.protocol`)."""

from certify.bounds.crown import CrownStats
from certify.bounds.engine import METHODS, compute_bounds, get_graph
from certify.bounds.graph import Graph, trace
from certify.bounds.heap import retain_freed_memory
from certify.bounds.protocol import Call, Op, Var, register, registered_targets

__all__ = [
    "METHODS",
    "Call",
    "CrownStats",
    "Graph",
    "Op",
    "Var",
    "compute_bounds",
    "get_graph",
    "register",
    "registered_targets",
    "retain_freed_memory",
    "trace",
]
