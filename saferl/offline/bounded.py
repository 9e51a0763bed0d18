"""One-input, batch-first forms of the offline learners' networks, for :mod:`certify`.

The offline networks take several inputs (``MLP(s, a)``, ``LNResNetNoise(a_t, s, t)``), return
ensemble members first (``EnsembleMLP``: (E, B)) or squeeze scalar heads to (B,); the bound
engine bounds one (B, D) input to one (B, n) output. Each network implements certify's structure
protocol (:mod:`certify.bounds.structured`) with the form below (one group, no structure):

* inputs are the concatenation of the network's inputs, in its argument order;
* outputs are batch first: ``MLP`` (B, out) (scalar heads (B, 1)), ``EnsembleMLP`` (B, E)
  (members side by side; (B, E * out) for wider heads), ``LNResNetNoise`` (B, act_dim) on
  ``[a_t, s, t]`` (the diffusion time a column: fixed by a box with lo = hi there, or bounded;
  its Fourier features are sin/cos of it);
* the same arithmetic otherwise (tests hold them equal), parameters shared, not copied.

``compute_bounds(net, x, eps)`` then bounds the network; an ensemble's views
(:class:`~saferl.offline.networks.EnsembleView`, e.g. FISOR's ``nets.q_h``) are not modules:
``view.bounded()`` gives their form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def one_group(lo: Tensor, module: nn.Module) -> list[tuple[Tensor, nn.Module]]:
    """The structure protocol's answer for a network without structure: every row, one form."""
    return [(torch.arange(lo.shape[0], device=lo.device), module)]


class FlatMLP(nn.Module):
    """:class:`~saferl.offline.networks.MLP` on its concatenated inputs, (B, in) -> (B, out)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.squash = net.net, net.squash

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        return torch.tanh(y) if self.squash else y


class BatchFirstEnsemble(nn.Module):
    """Members ``members`` of an :class:`~saferl.offline.networks.EnsembleMLP`:
    (B, in) -> (B, E) (one output each; (B, E * out) for wider heads), ReLU between layers."""

    def __init__(self, ensemble: nn.Module, members: slice | None = None) -> None:
        super().__init__()
        self.ensemble = ensemble
        self.members = members if members is not None else slice(None)

    def forward(self, x: Tensor) -> Tensor:
        layers = self.ensemble.layers
        h = x
        for i, layer in enumerate(layers):
            w, b = layer.weight[self.members], layer.bias[self.members][:, 0]  # (E, i, o), (E, o)
            eq = "bi,eio->beo" if i == 0 else "bei,eio->beo"
            h = torch.einsum(eq, h, w) + b
            if i < len(layers) - 1:
                h = torch.relu(h)
        return h.flatten(1)


class NoiseOnConcat(nn.Module):
    """:class:`~saferl.offline.networks.LNResNetNoise` on ``[a_t, s, t]`` (B, A + S + 1)
    -> ε (B, A); the time embedding (Fourier features, sin/cos) is computed from the column t."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.act_dim = net.out.out_features
        time_hidden = net.time[-1].out_features
        self.obs_dim = net.inp.in_features - self.act_dim - time_hidden

    def forward(self, z: Tensor) -> Tensor:
        a, s = z[:, : self.act_dim], z[:, self.act_dim : self.act_dim + self.obs_dim]
        return self.net(a, s, z[:, self.act_dim + self.obs_dim])


class FlatPerturbation(nn.Module):
    """BCQ-Lag's perturbation actor ξ_φ on ``[s, a]`` (B, S + A) -> (B, A):
    ``clamp(a + Φ tanh(f(s, a)), -1, 1)``."""

    def __init__(self, actor: nn.Module) -> None:
        super().__init__()
        self.f, self.phi = FlatMLP(actor.net), float(actor.phi)
        self.act_dim = actor.net.out_dim

    def forward(self, z: Tensor) -> Tensor:
        a = z[:, z.shape[1] - self.act_dim :]
        return torch.clamp(a + self.phi * self.f(z), -1.0, 1.0)


class BCQLagPolicy(nn.Module):
    """BCQ-Lag's policy for a given latent: ``[s, z]`` (B, S + latent) -> action (B, A):
    the VAE decodes ``a0 = D(s, z)`` and the perturbation actor moves it, ``ξ_φ(s, a0)``
    (``BCQLag.act``; ``z = 0`` with ``deterministic_act``, else a clamped prior draw: fix the
    latent by a box with lo = hi on it, or bound over a latent range)."""

    def __init__(self, nets: nn.Module) -> None:
        super().__init__()
        self.decoder = FlatMLP(nets.vae.decoder)
        self.actor = FlatPerturbation(nets.actor)
        self.latent = nets.vae.latent

    def forward(self, z: Tensor) -> Tensor:
        s = z[:, : z.shape[1] - self.latent]
        a0 = self.decoder(z)
        return self.actor(torch.cat([s, a0], -1))
