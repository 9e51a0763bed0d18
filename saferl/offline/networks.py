"""Networks and small helpers shared by the offline safe-RL learners.

* :class:`MLP` — plain fully connected network (critics, values, BC actors).
* :class:`VAE` — conditional VAE of behaviour actions (BCQ-Lag's generator, CPQ's OOD detector).
* :class:`EnsembleMLP` — ``E`` independent MLPs evaluated in one batched matmul, shape
  ``(E, B, out)``; used for the twin reward / cost / feasibility critics. FISOR keeps all its
  critics in one such ensemble (and both its values in another); :class:`EnsembleView` shows a
  run of members as an ensemble of its own without copying a weight.
* :class:`FourierFeatures` and :class:`LNResNetNoise` — the noise network of FISOR's diffusion
  actor (Zheng et al., ICLR 2024, App. on implementation; the IDQL LN-ResNet backbone).
* :func:`ema_update` — Polyak / exponential moving average of parameters.
* :func:`per_step_cost_threshold` turns an episode cost budget into a per-step one.

All modules take batched inputs; nothing loops over batch elements.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from saferl.offline.bounded import BatchFirstEnsemble, FlatMLP, NoiseOnConcat, one_group


def mlp(sizes: Iterable[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (none after the last)."""
    sizes = list(sizes)
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise ValueError(f"mlp needs at least two positive sizes, got {sizes}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """``in_dim -> hidden... -> out_dim``; ``forward(*xs)`` concatenates its inputs.

    Args:
        in_dim: total width of the concatenated inputs.
        out_dim: output width; a scalar head (``out_dim=1``) is squeezed to shape ``(B,)``.
        hidden: hidden widths (reference: 256, 256).
        squash: apply ``tanh`` to the output (deterministic actors with actions in [-1, 1]).
        activation: between hidden layers (ReLU; BCQ-Lag's perturbation actor uses Tanh).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: tuple[int, ...] = (256, 256),
        squash: bool = False,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        self.net = mlp((in_dim, *hidden, out_dim), activation)
        self.out_dim = out_dim
        self.squash = squash

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = self.net(torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0])
        if self.squash:
            y = torch.tanh(y)
        return y.squeeze(-1) if self.out_dim == 1 else y

    def certify_structure(self, lo: torch.Tensor, hi: torch.Tensor) -> list:
        """certify's structure protocol: bounded on the concatenated inputs, (B, out)
        (:mod:`saferl.offline.bounded`)."""
        return one_group(lo, FlatMLP(self))


class VAE(nn.Module):
    """Conditional VAE of behaviour actions (Kingma & Welling 2014; BCQ's generative model,
    Fujimoto et al. 2019, Sec. 4.1): encoder ``(s, a) -> (μ, σ)`` of a latent of width
    ``2·act_dim``, decoder ``(s, z) -> tanh(·)`` in [−1, 1]; ReLU MLPs (OSRL: 400, 400).

    ``log σ`` is clamped to [−4, 15]. :meth:`decode` without ``z`` draws ``z ~ N(0, I)`` clamped
    to ``[−latent_clip, latent_clip]`` (BCQ/OSRL: 0.5), from ``generator``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (400, 400),
        latent_clip: float = 0.5,
    ) -> None:
        super().__init__()
        if latent_clip <= 0:
            raise ValueError(f"latent_clip must be > 0, got {latent_clip}")
        self.latent = 2 * act_dim
        self.latent_clip = latent_clip
        self.encoder = MLP(obs_dim + act_dim, 2 * self.latent, hidden)
        self.decoder = MLP(obs_dim + self.latent, act_dim, hidden, squash=True)

    def encode(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std ``(B, latent)`` each."""
        mean, log_std = self.encoder(s, a).chunk(2, dim=-1)
        return mean, log_std.clamp(-4.0, 15.0).exp()

    def forward(self, s: torch.Tensor, a: torch.Tensor, noise: torch.Tensor):
        """Reconstruction, mean and std; ``noise`` (B, latent) is the reparameterisation draw
        (not clamped)."""
        mean, std = self.encode(s, a)
        return self.decoder(s, mean + std * noise), mean, std

    def sample_latent(
        self, n: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` prior draws ``clamp(N(0, I), −latent_clip, latent_clip)``, shape (n, latent)."""
        z = torch.randn(n, self.latent, device=device, generator=generator)
        return z.clamp(-self.latent_clip, self.latent_clip)

    def decode(
        self,
        s: torch.Tensor,
        z: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Actions ``(B, act_dim)`` decoded from ``z`` (default: clamped prior draws)."""
        if z is None:
            z = self.sample_latent(s.shape[0], s.device, generator)
        return self.decoder(s, z)


def kl_to_standard_normal(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise ``KL(N(μ, σ²) ‖ N(0, 1)) = −½(1 + log σ² − μ² − σ²)``; shape of ``mean``."""
    return -0.5 * (1 + torch.log(std.square()) - mean.square() - std.square())


class EnsembleLinear(nn.Module):
    """``E`` independent linear maps: ``(E, B, in) -> (E, B, out)`` (or ``(B, in)`` broadcast).

    Weights are stacked with a leading member dimension, ``weight (E, in, out)`` and ``bias (E,
    1, out)``, so the members run as one batched matmul (the reference's ``nn.vmap`` ensemble);
    ``members`` (a slice) runs only those members, on views of the same weights.
    """

    def __init__(self, ensemble: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)  # the default init of nn.Linear, per member
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if members is not None:
            weight, bias = weight[members], bias[members]
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(weight.shape[0], -1, -1)
        return torch.baddbmm(bias, x, weight)


class EnsembleMLP(nn.Module):
    """``E`` MLPs with ReLU; ``forward(*xs)`` of ``(B, ·)`` inputs returns ``(E, B)`` for
    ``out_dim=1`` else ``(E, B, out_dim)``."""

    def __init__(
        self, in_dim: int, out_dim: int = 1, hidden: tuple[int, ...] = (256, 256), ensemble: int = 2
    ) -> None:
        super().__init__()
        if ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {ensemble}")
        sizes = (in_dim, *hidden, out_dim)
        self.layers = nn.ModuleList(
            EnsembleLinear(ensemble, a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.out_dim = out_dim
        self.ensemble = ensemble

    def forward(self, *xs: torch.Tensor, members: slice | None = None) -> torch.Tensor:
        """``(B, ·)`` inputs (concatenated) -> ``(E, B)`` or ``(E, B, out_dim)``; ``members``
        (a slice of member indices) evaluates only those, ``E`` then being their number."""
        h = torch.cat(xs, dim=-1) if len(xs) > 1 else xs[0]
        for i, layer in enumerate(self.layers):
            h = layer(h, members)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h.squeeze(-1) if self.out_dim == 1 else h

    def certify_structure(self, lo: torch.Tensor, hi: torch.Tensor) -> list:
        """certify's structure protocol: bounded on the concatenated inputs, members side by
        side, (B, E) (:mod:`saferl.offline.bounded`)."""
        return one_group(lo, BatchFirstEnsemble(self))

    def member(self, k: int) -> nn.Sequential:
        """Member ``k`` as a plain ``nn.Sequential`` of Linear/ReLU (a copy, ``(B, in) -> (B,
        out)``), e.g. for :mod:`certify`'s bound engine."""
        if not 0 <= k < self.ensemble:
            raise ValueError(f"member index must be in [0, {self.ensemble}), got {k}")
        sizes = [self.layers[0].weight.shape[1]] + [layer.weight.shape[2] for layer in self.layers]
        net = mlp(sizes)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        with torch.no_grad():
            for linear, layer in zip(linears, self.layers, strict=True):
                linear.weight.copy_(layer.weight[k].T)
                linear.bias.copy_(layer.bias[k, 0])
        return net.to(self.layers[0].weight.device)


class EnsembleView:
    """Members ``[start, stop)`` of an :class:`EnsembleMLP`, used as an ensemble of their own.

    Calling it gives the parent's outputs for those members, ``(stop − start, B)`` (or, with
    ``single=True`` and one member, ``(B,)`` as a plain :class:`MLP`); :meth:`member` and
    :attr:`ensemble` are :class:`EnsembleMLP`'s. It owns no parameters: the weights stay the
    parent's (views, not copies), so state dicts, optimisers and EMA see each weight once and
    an update through the parent is seen here at once.
    """

    def __init__(self, parent: EnsembleMLP, start: int, stop: int, single: bool = False) -> None:
        if not 0 <= start < stop <= parent.ensemble:
            raise ValueError(f"need 0 <= start < stop <= {parent.ensemble}, got {start}, {stop}")
        if single and stop - start != 1:
            raise ValueError(f"single=True needs one member, got {stop - start}")
        self.parent, self.start, self.stop, self.single = parent, start, stop, single

    @property
    def ensemble(self) -> int:
        return self.stop - self.start

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor:
        out = self.parent(*xs, members=slice(self.start, self.stop))
        return out[0] if self.single else out

    def bounded(self) -> nn.Module:
        """The view's members as one module ``(B, in) -> (B, E)`` sharing the parent's weights,
        for :func:`certify.compute_bounds` (:mod:`saferl.offline.bounded`)."""
        return BatchFirstEnsemble(self.parent, slice(self.start, self.stop))

    def member(self, k: int) -> nn.Sequential:
        """Member ``k`` of the view as a plain ``nn.Sequential`` (:meth:`EnsembleMLP.member`)."""
        if not 0 <= k < self.ensemble:
            raise ValueError(f"member index must be in [0, {self.ensemble}), got {k}")
        return self.parent.member(self.start + k)


class FourierFeatures(nn.Module):
    """Learnable Fourier features of a scalar time: ``t (B,) -> [cos 2πtW, sin 2πtW] (B, dim)``.

    ``W`` (``dim/2`` frequencies) starts from N(0, 0.2²) and is trained with the actor.
    """

    def __init__(self, dim: int = 64, std: float = 0.2) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"FourierFeatures dim must be even, got {dim}")
        self.freq = nn.Parameter(torch.randn(dim // 2) * std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * t.reshape(-1, 1).float() * self.freq
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=-1)


class ResidualBlock(nn.Module):
    """``x + Dense(mish(Dense_4w(LayerNorm(Dropout(x)))))`` (the IDQL / FISOR LN-ResNet block)."""

    def __init__(self, width: int = 256, expansion: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, width * expansion)
        self.down = nn.Linear(width * expansion, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.mish(self.up(self.norm(self.dropout(x)))))


class LNResNetNoise(nn.Module):
    """Noise network ``ε_θ(a_t, s, t)`` of FISOR's diffusion actor.

    Input ``[a_t, s, c(t)]`` with ``c(t)`` = Fourier features (64) → MLP(128, 128, mish);
    backbone Dense(256) → ``blocks`` residual blocks → mish → Dense(action_dim).

    Shapes: ``a_t (B, act_dim)``, ``s (B, obs_dim)``, ``t (B,)`` integer or float timesteps;
    output ``(B, act_dim)``.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        width: int = 256,
        blocks: int = 3,
        time_dim: int = 64,
        time_hidden: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.time = nn.Sequential(
            FourierFeatures(time_dim),
            nn.Linear(time_dim, time_hidden),
            nn.Mish(),
            nn.Linear(time_hidden, time_hidden),
        )
        self.inp = nn.Linear(act_dim + obs_dim + time_hidden, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, 4, dropout) for _ in range(blocks)))
        self.out = nn.Linear(width, act_dim)

    def forward(self, a_t: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a_t, s, self.time(t)], dim=-1)
        return self.out(F.mish(self.blocks(self.inp(x))))

    def certify_structure(self, lo: torch.Tensor, hi: torch.Tensor) -> list:
        """certify's structure protocol: bounded on ``[a_t, s, t]`` (B, A + S + 1)
        (:mod:`saferl.offline.bounded`)."""
        return one_group(lo, NoiseOnConcat(self))


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, rate: float) -> None:
    """``θ_target ← (1 − rate)·θ_target + rate·θ_source`` for every parameter (in place)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"EMA rate must lie in [0, 1], got {rate}")
    tgt = list(target.parameters())
    src = list(source.parameters())
    torch._foreach_lerp_(tgt, src, rate)


def per_step_cost_threshold(episode_budget: float, gamma: float, horizon: int) -> float:
    """Discounted per-step threshold ``κ(1 − γ^L) / ((1 − γ) L)`` for a Q_c constraint (OSRL).

    Spreading the budget κ evenly over ``L`` steps costs ``κ/L`` per step, whose discounted sum
    ``Σ_{t<L} γ^t κ/L = κ(1 − γ^L)/((1 − γ)L)`` is the bound a discounted ``Q_c`` is held to.
    """
    if episode_budget < 0 or not 0.0 < gamma < 1.0 or horizon < 1:
        raise ValueError(
            f"need episode_budget >= 0, 0 < gamma < 1, horizon >= 1; got "
            f"{episode_budget}, {gamma}, {horizon}"
        )
    return episode_budget * (1.0 - gamma**horizon) / ((1.0 - gamma) * horizon)
