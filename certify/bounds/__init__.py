"""Bound propagation engine: IBP, CROWN (fast and dense paths) and CROWN-IBP on torch modules."""

from certify.bounds.crown import CrownStats
from certify.bounds.engine import METHODS, compute_bounds, get_graph
from certify.bounds.graph import Graph, trace

__all__ = ["METHODS", "CrownStats", "Graph", "compute_bounds", "get_graph", "trace"]
