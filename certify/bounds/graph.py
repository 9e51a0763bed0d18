"""Turn a torch module into a small operator graph (``nn.Sequential`` or ``torch.fx`` tracing).

The graph is a topologically ordered list of nodes; node 0 is the input. Each traced call is
mapped to an operator class through the registry of :mod:`certify.bounds.protocol`: parameters,
buffers and everything computed from them alone are constants (folded while tracing), and with
an example input the sizes read from the input (``x.shape[0]``, ``x.size(-1)``) become constants
too, the batch size a placeholder that follows the actual batch. Unsupported modules or
functions raise ``NotImplementedError`` naming the operator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

# the operator families register themselves on import
from certify.bounds import (
    activations,
    arith,
    normalization,
    ops,
    pointwise,
    products,
    shape,
    softmax,
)
from certify.bounds.protocol import BATCH, Call, Op, Var, op_for_module, ops_for_call
from certify.bounds.shape import Reshape

del activations, arith, normalization, ops, pointwise, products, shape, softmax


@dataclass
class Node:
    """One operator applied to the outputs of earlier nodes (``inputs`` are node indices)."""

    op: Op | None
    inputs: list[int] = field(default_factory=list)


@dataclass
class Graph:
    """Operator graph; ``nodes[0]`` is the input placeholder, the last node is the output."""

    nodes: list[Node]
    widths: list[int] = field(default_factory=list)
    """Flattened feature count of every node's output (filled by ``infer_shapes``)."""
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    dtype: torch.dtype = torch.float32
    consumers: list[list[int]] = field(default_factory=list)

    def infer_shapes(self, x: Tensor) -> None:
        """Record per-node output shapes (without batch) from one example row and bind them to
        the operators.

        A layer that cannot take what it receives (wrong feature count) raises ``ValueError``
        naming the layer, what it takes and what ``x`` gives.
        """
        x2 = _copies(x, 2)  # two rows: an operator mixing examples shows
        vals: list[Tensor] = [x2]
        from_input = [True]  # nodes equal to x up to reshapes
        for node in self.nodes[1:]:
            ins = [vals[i] for i in node.inputs]
            try:
                out = node.op.forward(*ins)
            except RuntimeError as err:
                direct = all(from_input[i] for i in node.inputs)
                raise ValueError(_shape_error(node.op, ins, x, direct, err)) from err
            if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != 2:
                raise NotImplementedError(
                    f"certify: {node.op.label} does not keep the batch dimension first"
                )
            node.op.bind([tuple(v.shape[1:]) for v in ins], tuple(out.shape[1:]))
            vals.append(out)
            from_input.append(node.op.flat_identity and all(from_input[i] for i in node.inputs))
        self.shapes = [tuple(v.shape[1:]) for v in vals]
        self.widths = [int(v[0].numel()) for v in vals]
        self.dtype = x.dtype
        self.consumers = [[] for _ in self.nodes]
        for k, node in enumerate(self.nodes[1:], start=1):
            for i in node.inputs:
                if k not in self.consumers[i]:
                    self.consumers[i].append(k)

    def forward(self, x: Tensor) -> Tensor:
        vals: list[Tensor] = [x]
        for node in self.nodes[1:]:
            vals.append(node.op.forward(*[vals[i] for i in node.inputs]))
        return vals[-1]

    def is_chain(self) -> bool:
        return all(n.inputs == [i] for i, n in enumerate(self.nodes[1:]))


def _copies(x: Tensor, b: int) -> Tensor:
    """``b`` copies of the first row of ``x`` (contiguous: ``view`` must work on it)."""
    return x[:1].repeat(b, *[1] * (x.dim() - 1))


def _shape_error(op: Op, ins: list[Tensor], x: Tensor, direct: bool, err: Exception) -> str:
    """One sentence on why ``op`` cannot run on the values derived from ``x``."""
    shape = tuple(x.shape[1:])
    hint = op.mismatch(ins, shape, direct)
    if hint is not None:
        return hint
    return f"the model cannot run on x of feature shape {shape}: {op!r} fails ({err})"


def module_op(m: nn.Module, name: str) -> Op:
    """The operator for one leaf module; raises naming the module type if unsupported."""
    return op_for_module(m, name)


def _is_torch_leaf(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn")


def _flatten_sequential(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, m in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(m, nn.Sequential):
            out.extend(_flatten_sequential(m, full + "."))
        else:
            out.append((full, m))
    return out


def trace(model: nn.Module, example: Tensor | None = None) -> Graph:
    """Build the graph of ``model``: ``nn.Sequential`` directly, anything else via ``torch.fx``.

    ``example`` (B, features...), optional: an input used to resolve sizes the model reads from
    its input (``x.shape``, ``x.size(d)``) while tracing.
    """
    if isinstance(model, nn.Sequential):
        layers = _flatten_sequential(model)
        if all(_is_torch_leaf(m) for _, m in layers):
            nodes = [Node(None)]
            for i, (name, m) in enumerate(layers):
                nodes.append(Node(module_op(m, name), [i]))
            return Graph(nodes)
    if _is_torch_leaf(model) and not isinstance(model, nn.Sequential):
        return Graph([Node(None), Node(module_op(model, type(model).__name__), [0])])
    return _trace_fx(model, example)


class _Recorder(torch.fx.Interpreter):
    """Runs the traced module and keeps every node's value."""

    def __init__(self, gm) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n):
        v = super().run_node(n)
        self.values[n.name] = v
        return v


def _example_values(gm, example: Tensor | None) -> tuple[dict, dict] | None:
    """Values of every node for batches of 2 and 3 copies of the example's first row."""
    if example is None:
        return None
    runs = []
    for b in (2, 3):
        rec = _Recorder(gm)
        with torch.no_grad():
            try:
                rec.run(_copies(example, b))
            except Exception:  # the graph itself reports the failing node later
                return None
        runs.append(rec.values)
    return runs[0], runs[1]


class _Unknown:
    """A size computed from the input that is neither constant nor the batch size."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<size of node {self.name!r} depending on the batch size>"


def _is_size(v: Any) -> bool:
    """Numbers, shapes, dtypes and tuples of them: what a model reads from its input's shape."""
    if isinstance(v, (tuple, list)):
        return all(_is_size(a) for a in v)
    return isinstance(v, (int, float, bool, torch.dtype, torch.device)) or v is None


def _size_value(v2: Any, v3: Any, name: str) -> Any:
    """A size read from the input as a constant, ``BATCH`` where it is the batch size."""
    if isinstance(v2, (tuple, list)) and isinstance(v3, (tuple, list)) and len(v2) == len(v3):
        kind = tuple if isinstance(v2, torch.Size) else type(v2)
        return kind(_size_value(a, b, name) for a, b in zip(v2, v3, strict=True))
    if v2 == v3:
        return v2
    if (v2, v3) == (2, 3):
        return BATCH
    return _Unknown(name)


def _trace_fx(model: nn.Module, example: Tensor | None) -> Graph:
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises many error types for untraceable control flow
        raise NotImplementedError(
            f"cannot trace {type(model).__name__} with torch.fx ({err}); pass an nn.Sequential "
            "or an fx-traceable module"
        ) from err
    values = _example_values(gm, example)
    modules = dict(gm.named_modules())
    index: dict[str, int] = {}  # traced tensors: fx name -> graph node
    consts: dict[str, Any] = {}  # everything else: fx name -> value
    nodes: list[Node] = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if nodes:
                raise NotImplementedError(
                    f"{type(model).__name__}.forward takes several inputs; one tensor is expected"
                )
            index[n.name] = 0
            nodes.append(Node(None))
        elif n.op == "get_attr":
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            consts[n.name] = obj
        elif n.op == "output":
            arg = n.args[0]
            if not isinstance(arg, torch.fx.Node) or arg.name not in index:
                raise NotImplementedError("the model must return a single tensor computed from x")
            out = index[arg.name]
            if out != len(nodes) - 1:
                nodes.append(Node(_named_identity("output"), [out]))
        else:
            _add_call(n, nodes, index, consts, modules, values)
    return Graph(nodes)


def _named_identity(name: str) -> Op:
    op = Reshape()
    op.name, op.what = name, "output"
    return op


def _depends(a: Any, index: dict) -> bool:
    import torch.fx

    if isinstance(a, torch.fx.Node):
        return a.name in index
    if isinstance(a, (list, tuple)):
        return any(_depends(v, index) for v in a)
    if isinstance(a, dict):
        return any(_depends(v, index) for v in a.values())
    if isinstance(a, slice):
        return any(_depends(v, index) for v in (a.start, a.stop, a.step))
    return False


def _add_call(n, nodes: list[Node], index: dict, consts: dict, modules: dict, values) -> None:
    """Map one fx call node to a constant, a size or operator nodes."""
    if not _depends((n.args, n.kwargs), index):  # constant folding
        args, kwargs = _substitute((n.args, n.kwargs), consts, None)
        consts[n.name] = _evaluate(n, args, kwargs, modules)
        return
    if values is not None and _is_size(values[0].get(n.name)):
        consts[n.name] = _size_value(values[0].get(n.name), values[1].get(n.name), n.name)
        return
    sources: list[int] = []
    args, kwargs = _substitute((n.args, n.kwargs), consts, (index, sources))
    for a in _flat(args) + _flat(list(kwargs.values())):
        if isinstance(a, _Unknown):
            raise NotImplementedError(
                f"certify: node {n.name!r} uses {a!r}; only the batch size itself may vary"
            )
    if n.op == "call_module":
        m = modules[n.target]
        if len(sources) != 1 or len(args) != 1 or kwargs:
            raise NotImplementedError(
                f"certify: module {type(m).__name__} ({n.target!r}) called with several inputs"
            )
        op_list, chosen = [module_op(m, n.target)], None
    else:
        call = Call(n.target, tuple(args), kwargs, n.name, sources)
        op_list, chosen = ops_for_call(call)
    ins = [sources[v.index] for v in chosen] if chosen is not None else list(sources)
    for op in op_list:
        nodes.append(Node(op, ins))
        ins = [len(nodes) - 1]
    index[n.name] = len(nodes) - 1


def _flat(a: Any) -> list:
    if isinstance(a, (list, tuple)):
        return [v for x in a for v in _flat(x)]
    return [a]


def _substitute(a: Any, consts: dict, traced: tuple | None) -> Any:
    """fx nodes replaced by constants, or by :class:`Var` (``traced``: index, sources)."""
    import torch.fx

    if isinstance(a, torch.fx.Node):
        if traced is not None and a.name in traced[0]:
            sources = traced[1]
            sources.append(traced[0][a.name])
            return Var(len(sources) - 1)
        return consts[a.name]
    if isinstance(a, tuple):
        return tuple(_substitute(v, consts, traced) for v in a)
    if isinstance(a, list):
        return [_substitute(v, consts, traced) for v in a]
    if isinstance(a, dict):
        return {k: _substitute(v, consts, traced) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(*(_substitute(v, consts, traced) for v in (a.start, a.stop, a.step)))
    return a


def _evaluate(n, args: tuple, kwargs: dict, modules: dict) -> Any:
    with torch.no_grad():
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        return modules[n.target](*args, **kwargs)
