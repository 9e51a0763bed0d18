"""Training loop for EP learners, with a recurrent-backprop (BP) baseline on the same network.

One update (ICLR 2024, Alg. 1):
 1. free phase: u* from u = 0 in T1 steps (residual, non-converged and oscillating counts kept);
 2. error vector v: EP (N = 1), holomorphic EP (N >= 2), exact (N = 0), or, for the BP
    baseline, recurrent backprop ``-delta`` (the exact gradient through the fixed point);
 3. dynamics gradient ``-(dF/dtheta)^T v`` (+ ``coef`` x the gradient of the Jacobian-homeostasis
    loss at u*), readout gradient at u*; SGD with momentum.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor

from saferl.common.runtime import resolve_device
from saferl.ep.estimators import (
    check_estimator,
    dynamics_gradients,
    ep_error,
    rbp_error,
    readout_gradients,
)
from saferl.ep.homeostasis import homeostasis_loss
from saferl.ep.network import EPNetConfig, EPNetwork, RelaxStats


@dataclass
class EPTrainerConfig:
    """Training hyperparameters (reference MLP: batch 50, T1 150, T2 20, SGD 0.9, lr 0.01)."""

    method: str = "ep"
    """"ep" (equilibrium propagation with N points) or "bp" (recurrent backprop baseline)."""
    n_points: int = 2
    """N: 0 exact derivative, 1 one-sided EP, >= 2 holomorphic Cauchy estimate."""
    beta: float = 0.5
    """Nudge strength |beta| (signed for N = 1)."""
    t1: int = 150
    """Free-phase steps."""
    t2: int = 20
    """Nudged-phase steps (each from u*)."""
    rbp_steps: int = 100
    """Adjoint iterations of the BP baseline."""
    homeostasis: float = 0.0
    """Coefficient of the Jacobian-homeostasis gradient (reference: 1.0 for the 90-degree MLP)."""
    homeostasis_draws: int = 1
    """Monte-Carlo eps draws per sample for the homeostatic loss."""
    lr: float = 0.01
    """SGD learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    batch_size: int = 50
    """Mini-batch size."""
    epochs: int = 10
    """Passes over the training set."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0 = off); guards BP against adjoint blow-ups."""
    tol: float = 1e-3
    """Fixed-point residual ||F(u*)|| above which a sample counts as not converged."""
    seed: int = 0
    """Seeds the initialisation, the batch order and the homeostasis draws."""

    def __post_init__(self) -> None:
        if self.method not in ("ep", "bp"):
            raise ValueError(f"method must be 'ep' or 'bp', got {self.method!r}")
        for name in ("t1", "t2", "rbp_steps", "homeostasis_draws", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not 0 <= self.momentum < 1:
            raise ValueError(f"need lr > 0 and 0 <= momentum < 1, got {self.lr}, {self.momentum}")
        if self.grad_clip < 0 or not math.isfinite(self.grad_clip):
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.homeostasis < 0 or not math.isfinite(self.homeostasis):
            raise ValueError(f"homeostasis coefficient must be >= 0, got {self.homeostasis}")


@dataclass
class EpochLog:
    """Metrics of one epoch (train: running over the epoch; test: after the epoch)."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    test_loss: float
    residual: dict = field(default_factory=dict)
    homeostasis: float = 0.0
    seconds: float = 0.0


class EPTrainer:
    """Trains an :class:`EPNetwork` with EP (or the BP baseline) on in-memory tensors.

    Args:
        net_config: the architecture (asymmetry angle included).
        config: the training hyperparameters.
        device: torch device (default cuda if available, else cpu).
    """

    def __init__(
        self,
        net_config: EPNetConfig,
        config: EPTrainerConfig | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.config = config or EPTrainerConfig()
        self.device = resolve_device(device)
        self.net = EPNetwork(net_config, device=self.device, seed=self.config.seed)
        if self.config.method == "ep":
            check_estimator(self.net, self.config.n_points, self.config.beta)
        self.opt = torch.optim.SGD(
            self.net.parameters(), lr=self.config.lr, momentum=self.config.momentum
        )
        self.gen = torch.Generator().manual_seed(self.config.seed + 1)

    # ------------------------------------------------------------------ one step
    def error_vector(self, x: Tensor, y: Tensor, u_star: Tensor) -> Tensor:
        """The error vector v (batch, n) of the configured method."""
        c = self.config
        if c.method == "bp":
            return rbp_error(self.net, x, y, u_star, c.rbp_steps)
        return ep_error(self.net, x, y, u_star, c.n_points, c.beta, c.t2)

    def update(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One SGD step on a batch x (batch, d), y (batch,); returns scalars (loss, acc, ...)."""
        c = self.config
        self.net.check_input(x, y)
        u_star, stats = self.net.free_phase(x, c.t1, c.tol)
        v = self.error_vector(x, y, u_star)
        grads = dynamics_gradients(self.net, x, u_star, v)
        hom = 0.0
        if c.homeostasis > 0:
            h_loss = homeostasis_loss(self.net, x, u_star, c.homeostasis_draws, self.gen)
            # allow_unused: the input weights W_1 and the biases do not enter J.
            h_grads = torch.autograd.grad(h_loss, self.net.dynamics_parameters(), allow_unused=True)
            grads = [
                g if h is None else g + c.homeostasis * h
                for g, h in zip(grads, h_grads, strict=True)
            ]
            hom = float(h_loss.detach())
        loss, r_grads = readout_gradients(self.net, u_star, y)
        params = self.net.dynamics_parameters() + self.net.readout_parameters()
        for p, g in zip(params, grads + r_grads, strict=True):
            p.grad = g.detach()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, c.grad_clip or float("inf")))
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            acc = float((self.predict_from_state(u_star) == y).double().mean())
        return {
            "loss": float(loss.detach()),
            "acc": acc,
            "homeostasis": hom,
            "grad_norm": grad_norm,
            **stats.summary(),
        }

    # ------------------------------------------------------------------ evaluation
    def predict_from_state(self, u_star: Tensor) -> Tensor:
        """Class predictions (batch,) from fixed points (batch, n)."""
        return self.net.logits(self.net.rho(self.net.split(u_star)[-1])).argmax(-1)

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor, batch_size: int = 1000) -> dict[str, float]:
        """Accuracy, mean loss and fixed-point statistics on a dataset (batched)."""
        self.net.check_input(x, y)
        correct, total_loss, parts = 0, 0.0, []
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            u_star, stats = self.net.free_phase(xb, self.config.t1, self.config.tol)
            correct += int((self.predict_from_state(u_star) == yb).sum())
            total_loss += float(self.net.loss(u_star, yb).sum())
            parts.append(stats)
        res = torch.cat([s.residual for s in parts])
        conv = torch.cat([s.converged for s in parts])
        osc = torch.cat([s.oscillating for s in parts])
        return {
            "acc": correct / len(x),
            "loss": total_loss / len(x),
            **RelaxStats(res, conv, osc).summary(),
        }

    def fit(
        self,
        x_train: Tensor,
        y_train: Tensor,
        x_test: Tensor,
        y_test: Tensor,
        progress: bool = False,
    ) -> list[EpochLog]:
        """Train for ``config.epochs`` epochs; returns one :class:`EpochLog` per epoch."""
        self.net.check_input(x_train, y_train)
        self.net.check_input(x_test, y_test)
        c = self.config
        rng = np.random.default_rng(c.seed)
        logs = []
        epochs = range(1, c.epochs + 1)
        if progress:
            from tqdm import tqdm

            epochs = tqdm(epochs, desc=f"{c.method} N={c.n_points}")
        for epoch in epochs:
            t0 = time.perf_counter()
            perm = torch.as_tensor(rng.permutation(len(x_train)), device=x_train.device)
            steps = []
            for i in range(0, len(perm), c.batch_size):
                idx = perm[i : i + c.batch_size]
                steps.append(self.update(x_train[idx], y_train[idx]))
            test = self.evaluate(x_test, y_test)
            logs.append(
                EpochLog(
                    epoch=epoch,
                    train_loss=float(np.mean([s["loss"] for s in steps])),
                    train_acc=float(np.mean([s["acc"] for s in steps])),
                    test_acc=test["acc"],
                    test_loss=test["loss"],
                    residual={k: v for k, v in test.items() if k not in ("acc", "loss")},
                    homeostasis=float(np.mean([s["homeostasis"] for s in steps])),
                    seconds=time.perf_counter() - t0,
                )
            )
        return logs

    def state_dict_config(self) -> dict:
        """Resolved configs (for writing next to results)."""
        return {"net": asdict(self.net.config), "trainer": asdict(self.config)}
