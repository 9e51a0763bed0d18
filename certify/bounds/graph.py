"""Turn a torch module into a small operator graph (``nn.Sequential`` or ``torch.fx`` tracing).

The graph is a topologically ordered list of nodes; node 0 is the input. Unsupported modules or
functions raise ``NotImplementedError`` naming the operator.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from certify.bounds import activations as act
from certify.bounds.normalization import LayerNormOp
from certify.bounds.ops import Add, Affine, Neg, Op, Reshape, Scale, Sub


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

    def infer_shapes(self, x: Tensor) -> None:
        """Record per-node output shapes (without batch) from one example row.

        A layer that cannot take what it receives (wrong feature count) raises ``ValueError``
        naming the layer, what it takes and what ``x`` gives.
        """
        vals: list[Tensor] = [x]
        from_input = [True]  # nodes equal to x up to reshapes
        for node in self.nodes[1:]:
            ins = [vals[i] for i in node.inputs]
            try:
                vals.append(node.op.forward(*ins))
            except RuntimeError as err:
                direct = all(from_input[i] for i in node.inputs)
                raise ValueError(_shape_error(node.op, ins, x, direct, err)) from err
            from_input.append(node.op.kind == "reshape" and all(from_input[i] for i in node.inputs))
        self.shapes = [tuple(v.shape[1:]) for v in vals]
        self.widths = [int(v[0].numel()) for v in vals]
        self.dtype = x.dtype

    def forward(self, x: Tensor) -> Tensor:
        vals: list[Tensor] = [x]
        for node in self.nodes[1:]:
            vals.append(node.op.forward(*[vals[i] for i in node.inputs]))
        return vals[-1]

    def is_chain(self) -> bool:
        return all(n.inputs == [i] for i, n in enumerate(self.nodes[1:]))


def _shape_error(op: Op, ins: list[Tensor], x: Tensor, direct: bool, err: Exception) -> str:
    """One sentence on why ``op`` cannot run on the values derived from ``x``."""
    shape = tuple(x.shape[1:])
    if isinstance(op, Affine):
        takes, got = op.weight.shape[1], ins[0].shape[-1]
        if direct:
            return (
                f"x has {got} features (feature shape {shape}) where the model's first linear "
                f"layer {op.name!r} takes {takes}; pass x of shape (B, {takes})"
            )
        return (
            f"layer {op.name!r} takes {takes} input features but receives {got} for x of feature "
            f"shape {shape}: the model's layers do not fit together"
        )
    return f"the model cannot run on x of feature shape {shape}: {op!r} fails ({err})"


def _flatten(start: int, end: int):
    return lambda x: torch.flatten(x, start, end)


def module_op(m: nn.Module, name: str) -> Op:
    """The operator for one leaf module; raises naming the module type if unsupported."""
    if isinstance(m, nn.Linear):
        return Affine(m.weight, m.bias, name)
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return Reshape(lambda x: x, name)
    if isinstance(m, nn.Flatten):
        return Reshape(_flatten(m.start_dim, m.end_dim), name)
    factory = _MODULE_FACTORIES.get(type(m))
    if factory is not None:
        return _named(factory(m), name)
    raise NotImplementedError(
        f"unsupported layer {type(m).__name__} ({name!r}): the bound engine supports Linear, "
        "ReLU, LeakyReLU, Tanh, Sigmoid, Identity, Flatten, Dropout (eval), and for IBP also "
        "SiLU, Mish, GELU, Softplus, ELU, LayerNorm and residual additions"
    )


_MODULE_FACTORIES = {
    nn.ReLU: lambda m: act.ReLU(),
    nn.Tanh: lambda m: act.Tanh(),
    nn.Sigmoid: lambda m: act.Sigmoid(),
    nn.LeakyReLU: lambda m: act.LeakyReLU(m.negative_slope),
    nn.SiLU: lambda m: act.silu(),
    nn.Mish: lambda m: act.mish(),
    nn.GELU: lambda m: act.gelu(m.approximate),
    nn.Softplus: lambda m: act.softplus(m.beta, m.threshold),
    nn.ELU: lambda m: act.elu(m.alpha),
    nn.LayerNorm: lambda m: LayerNormOp(m),
}


def _is_torch_leaf(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.nn")


def _named(op: Op, name: str) -> Op:
    op.name = name
    return op


def _flatten_sequential(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, m in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(m, nn.Sequential):
            out.extend(_flatten_sequential(m, full + "."))
        else:
            out.append((full, m))
    return out


def trace(model: nn.Module) -> Graph:
    """Build the graph of ``model``: ``nn.Sequential`` directly, anything else via ``torch.fx``."""
    if isinstance(model, nn.Sequential):
        layers = _flatten_sequential(model)
        if all(_is_torch_leaf(m) for _, m in layers):
            nodes = [Node(None)]
            for i, (name, m) in enumerate(layers):
                nodes.append(Node(module_op(m, name), [i]))
            return Graph(nodes)
    if isinstance(model, (nn.Linear, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Flatten)):
        return Graph([Node(None), Node(module_op(model, type(model).__name__), [0])])
    return _trace_fx(model)


def _trace_fx(model: nn.Module) -> Graph:
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises many error types for untraceable control flow
        raise NotImplementedError(
            f"cannot trace {type(model).__name__} with torch.fx ({err}); pass an nn.Sequential "
            "or an fx-traceable module"
        ) from err
    modules = dict(gm.named_modules())
    index: dict[str, int] = {}
    nodes: list[Node] = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            if nodes:
                raise NotImplementedError(
                    f"{type(model).__name__}.forward takes several inputs; one tensor is expected"
                )
            index[n.name] = 0
            nodes.append(Node(None))
        elif n.op == "output":
            arg = n.args[0]
            if not isinstance(arg, torch.fx.Node):
                raise NotImplementedError("the model must return a single tensor")
            out = index[arg.name]
            if out != len(nodes) - 1:
                nodes.append(Node(Reshape(lambda x: x, "output"), [out]))
        else:
            op, ins = _fx_node_op(n, modules, gm)
            nodes.append(Node(op, [index[a.name] for a in ins]))
            index[n.name] = len(nodes) - 1
    return Graph(nodes)


_FX_ACT = {
    torch.relu: act.ReLU,
    torch.nn.functional.relu: act.ReLU,
    torch.tanh: act.Tanh,
    torch.nn.functional.tanh: act.Tanh,
    torch.sigmoid: act.Sigmoid,
    torch.nn.functional.sigmoid: act.Sigmoid,
    torch.nn.functional.silu: lambda name: _named(act.silu(), name),
    torch.nn.functional.mish: lambda name: _named(act.mish(), name),
    torch.nn.functional.gelu: lambda name: _named(act.gelu(), name),
}
_FX_METHOD_ACT = {"relu": act.ReLU, "tanh": act.Tanh, "sigmoid": act.Sigmoid}
_FX_IDENTITY_METHODS = {"float", "contiguous", "detach", "clone"}


def _fx_node_op(n, modules: dict, gm) -> tuple[Op, list]:
    """Map one fx node to an operator and its tensor inputs."""
    import torch.fx

    tensor_args = [a for a in n.args if isinstance(a, torch.fx.Node)]
    consts = [a for a in n.args if not isinstance(a, torch.fx.Node)]
    if n.op == "call_module":
        return module_op(modules[n.target], n.target), tensor_args
    op = None
    if n.op == "call_function":
        op, tensor_args = _fx_function(n, tensor_args, consts, gm)
    elif n.op == "call_method":
        op = _fx_method(n, consts)
    if op is not None:
        return op, tensor_args
    target = n.target
    raise NotImplementedError(
        f"unsupported operation {n.op} {getattr(target, '__name__', target)!r} (node {n.name!r}) "
        "in the bound engine"
    )


def _add_op(tensor_args: list, consts: list, name: str) -> Op:
    if len(tensor_args) == 2:
        return Add(None, name)
    return Add(consts[0] if consts else None, name)


def _const(a, gm) -> Tensor:
    import torch.fx

    if isinstance(a, torch.fx.Node) and a.op == "get_attr":
        obj = gm
        for part in a.target.split("."):
            obj = getattr(obj, part)
        return obj
    if isinstance(a, Tensor) or a is None:
        return a
    raise NotImplementedError(f"F.linear with a non-constant weight ({a}) is not supported")


def _fx_function(n, tensor_args: list, consts: list, gm) -> tuple[Op | None, list]:
    """Operators for ``call_function`` nodes (``None`` if unsupported)."""
    target = n.target
    if target in _FX_ACT:
        return _FX_ACT[target](n.name), tensor_args
    if target in (operator.add, torch.add) and not n.kwargs:
        return _add_op(tensor_args, consts, n.name), tensor_args
    if target in (operator.sub, torch.sub) and len(tensor_args) == 2:
        return Sub(), tensor_args
    if target in (operator.mul, torch.mul) and len(tensor_args) == 1 and consts:
        return Scale(consts[0], n.name), tensor_args
    if target in (operator.neg, torch.neg):
        return Neg(), tensor_args
    if target is torch.flatten:
        start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
        end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
        return Reshape(_flatten(start, end), n.name), tensor_args
    if target is torch.nn.functional.linear:
        w = _const(n.args[1], gm)
        b = _const(n.args[2], gm) if len(n.args) > 2 else n.kwargs.get("bias")
        return Affine(w, b, n.name), tensor_args[:1]
    return None, tensor_args


def _fx_method(n, consts: list) -> Op | None:
    """Operators for ``call_method`` nodes (``None`` if unsupported)."""
    target = n.target
    if target in _FX_METHOD_ACT:
        return _FX_METHOD_ACT[target](n.name)
    if target in _FX_IDENTITY_METHODS:
        return Reshape(lambda x: x, n.name)
    if target == "flatten":
        start = n.args[1] if len(n.args) > 1 else 0
        return Reshape(_flatten(start, -1), n.name)
    if target in ("view", "reshape") and consts:
        shape = consts

        def resh(x: Tensor, shape=shape) -> Tensor:
            return x.reshape(x.shape[0], *shape[1:])

        return Reshape(resh, n.name)
    return None
