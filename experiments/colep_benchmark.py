"""Shared benchmark for COLEP vs single-model robust conformal prediction (used by the
``colep_digits.py`` and ``colep_hopper.py`` scripts; not a script itself).

For one task (inputs, labels, attributes, knowledge rules) it trains a single multi-class MLP
and one binary MLP sensor per label and per attribute, learns the circuit weights on held-out
data, then, over random calibration/test splits of a pool, reports for each ℓ∞ radius ε:

- clean coverage and size of the plain split-CP sets;
- coverage under a PGD attack (each method attacked through its own pipeline);
- certified coverage: a sound lower bound on the fraction of test points whose label is in the
  method's set at *every* input of the ε-ball (plain CP: upper score bound ≤ q̂; robust
  methods: clean score ≤ q̂, which implies it);
- mean size of the certified (robust) sets at the attacked inputs.

Bounds: ``certify.compute_bounds`` (CROWN). Everything is seeded; one torch thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from certify.colep import COLEP, COLEPConfig, sensor_bounds_linf, sensor_probs
from certify.colep import coverage_over_splits as colep_splits
from certify.conformal import lac_scores, prob_bounds, sets_over_splits
from saferl.common.io import save_figure, write_text


@dataclass
class Task:
    """A classification task with attribute knowledge, in tensors (inputs already scaled)."""

    name: str
    x: Tensor
    y: Tensor
    attrs: Tensor
    rules: Tensor
    label_names: list[str]
    attr_names: list[str]
    x_min: float | None = None
    x_max: float | None = None
    groups: Tensor | None = None
    """Optional group id per row (e.g. episode): train/fit/pool are split by group."""


@dataclass
class BenchConfig:
    """Budgets and protocol (defaults: the numbers in the README)."""

    seed: int = 0
    alpha: float = 0.1
    hidden: int = 64
    """Hidden width of every MLP (two hidden ReLU layers)."""
    train_steps: int = 400
    """Full-batch Adam steps per network."""
    noise_std: float = 0.0
    """Gaussian input noise during training (smoother, more certifiable nets)."""
    fractions: tuple[float, float] = (0.5, 0.15)
    """Train and circuit-fit fractions; the rest is the calibration/test pool."""
    cal_fraction: float = 0.5
    """Fraction of the pool used for calibration in each split."""
    n_splits: int = 200
    eps: list[float] = field(default_factory=lambda: [0.0, 0.01, 0.02])
    pgd_steps: int = 20
    fit_steps: int = 300
    """Adam steps for the circuit weights."""
    method: str = "crown"


def mlp(d_in: int, d_out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, d_out),
    )  # fmt: skip


def train(model: nn.Module, x: Tensor, target: Tensor, loss_fn, cfg: BenchConfig) -> nn.Module:
    """Full-batch Adam with weight decay and optional input noise."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(cfg.train_steps):
        opt.zero_grad()
        xin = x + cfg.noise_std * torch.randn_like(x) if cfg.noise_std > 0 else x
        loss_fn(model(xin), target).backward()
        opt.step()
    return model.eval()


def split(task: Task, cfg: BenchConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Index sets (train, fit, pool) from a seeded permutation."""
    n = task.x.shape[0]
    g = torch.Generator().manual_seed(cfg.seed)
    if task.groups is None:
        perm = torch.randperm(n, generator=g)
    else:  # whole groups in a random order, rows of a group together
        ids = task.groups.unique()
        rank = torch.empty(int(ids.max()) + 1, dtype=torch.long)
        rank[ids] = torch.randperm(len(ids), generator=g)
        perm = torch.argsort(rank[task.groups] * n + torch.arange(n))
    a = int(cfg.fractions[0] * n)
    b = a + int(cfg.fractions[1] * n)
    return perm[:a], perm[a:b], perm[b:]


@dataclass
class Models:
    single: nn.Sequential
    sensors: list[nn.Sequential]
    colep: dict[str, COLEP]
    accuracy: dict[str, float]


def build_models(task: Task, cfg: BenchConfig) -> Models:
    """Train the single model, the sensors and the circuits (one per calibration mode)."""
    torch.manual_seed(cfg.seed)
    tr, fit, pool = split(task, cfg)
    k, a = task.rules.shape
    d = task.x.shape[1]
    ce = nn.functional.cross_entropy
    bce = nn.functional.binary_cross_entropy_with_logits
    single = train(mlp(d, k, cfg.hidden), task.x[tr], task.y[tr], ce, cfg)
    onehot = nn.functional.one_hot(task.y, k).float()
    targets = torch.cat([onehot, task.attrs.float()], 1)
    sensors = [
        train(mlp(d, 1, cfg.hidden), task.x[tr], targets[tr, i : i + 1], bce, cfg)
        for i in range(k + a)
    ]
    s_fit = sensor_probs(sensors, task.x[fit])
    colep = {}
    for mode in ("classwise", "union"):
        model = COLEP(
            task.rules, cfg=COLEPConfig(alpha=cfg.alpha, calibration=mode, fit_steps=cfg.fit_steps)
        )
        model.fit(s_fit[:, :k], s_fit[:, k:], task.y[fit])
        colep[mode] = model
    with torch.no_grad():
        s_pool = sensor_probs(sensors, task.x[pool])
        acc = {
            "single": (single(task.x[pool]).argmax(1) == task.y[pool]).float().mean().item(),
            "label sensors": (s_pool[:, :k].argmax(1) == task.y[pool]).float().mean().item(),
            "COLEP": (colep["classwise"](s_pool[:, :k], s_pool[:, k:]).argmax(1) == task.y[pool])
            .float()
            .mean()
            .item(),
            "attribute sensors": ((s_pool[:, k:] > 0.5) == task.attrs[pool].bool())
            .float()
            .mean()
            .item(),
        }
    return Models(single, sensors, colep, acc)


def pgd(objective, x: Tensor, eps: float, steps: int, x_min, x_max) -> Tensor:
    """ℓ∞ PGD minimising ``objective(x') -> (n,)`` (summed) within the ball ∩ [x_min, x_max]."""
    if eps == 0:
        return x.clone()
    delta = (torch.rand_like(x) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(objective(x + delta).sum(), delta)
        with torch.no_grad():
            delta = (delta - 2.5 * eps / steps * g.sign()).clamp(-eps, eps)
            if x_min is not None:
                delta = torch.maximum(delta, x_min - x)
            if x_max is not None:
                delta = torch.minimum(delta, x_max - x)
    return (x + delta).detach()


def _single_rows(task, models, x, y, eps, cfg) -> list[dict]:
    """Plain and bound-based robust split CP (LAC) on the single model."""
    m = models.single
    with torch.no_grad():
        probs = torch.softmax(m(x), 1)

    def obj(z):
        return torch.log_softmax(m(z), 1).gather(1, y[:, None]).squeeze(1)

    x_adv = pgd(obj, x, eps, cfg.pgd_steps, task.x_min, task.x_max)
    with torch.no_grad():
        probs_adv = torch.softmax(m(x_adv), 1)
        lo_x, hi_x = prob_bounds(m, x, eps, cfg.method, margins=True, x_min=task.x_min,
                                 x_max=task.x_max)  # fmt: skip
        lo_a, hi_a = prob_bounds(m, x_adv, eps, cfg.method, margins=True, x_min=task.x_min,
                                 x_max=task.x_max)  # fmt: skip
        _, hi_a_logit = prob_bounds(m, x_adv, eps, cfg.method, margins=False, x_min=task.x_min,
                                    x_max=task.x_max)  # fmt: skip
    s = lac_scores(probs)
    cal = s.gather(1, y[:, None]).squeeze(1)
    n_cal = int(cfg.cal_fraction * len(y))

    def run(test):  # the same splits for every column
        return sets_over_splits(cal, test, y, n_cal, cfg.alpha, cfg.n_splits, gen(cfg))

    clean_cov, clean_size = run(s)
    pgd_plain, size_plain = run(lac_scores(probs_adv))
    cert_plain, _ = run(1.0 - lo_x)  # upper score bound over the ball around the clean point
    pgd_rob, size_rob = run(1.0 - hi_a)  # robust sets at the attacked inputs
    pgd_rob_l, size_rob_l = run(1.0 - hi_a_logit)
    return [
        _row("split CP (single model)", eps, clean_cov, clean_size, pgd_plain, cert_plain,
             size_plain),
        _row("robust CP (single model, CROWN logit bounds)", eps, clean_cov, clean_size,
             pgd_rob_l, clean_cov, size_rob_l),
        _row("robust CP (single model, CROWN margins)", eps, clean_cov, clean_size, pgd_rob,
             clean_cov, size_rob),
    ]  # fmt: skip


def _colep_rows(task, models, x, y, eps, cfg) -> list[dict]:
    k = task.rules.shape[0]
    rows = []
    n_cal = int(cfg.cal_fraction * len(y))
    s = sensor_probs(models.sensors, x)
    for mode, model in models.colep.items():

        def obj(z, model=model):
            sp = torch.sigmoid(torch.cat([sm(z) for sm in models.sensors], 1))
            return model(sp[:, :k], sp[:, k:]).gather(1, y[:, None]).clamp_min(1e-12).log()

        x_adv = pgd(lambda z: obj(z).squeeze(1), x, eps, cfg.pgd_steps, task.x_min, task.x_max)
        with torch.no_grad():
            pi = model(s[:, :k], s[:, k:])
            s_adv = sensor_probs(models.sensors, x_adv)
            pi_adv = model(s_adv[:, :k], s_adv[:, k:])
            kw = {"x_min": task.x_min, "x_max": task.x_max}
            lo, hi = sensor_bounds_linf(models.sensors, x, eps, cfg.method, **kw)
            pi_lo_x, _ = model.bounds(lo[:, :k], hi[:, :k], lo[:, k:], hi[:, k:])
            lo, hi = sensor_bounds_linf(models.sensors, x_adv, eps, cfg.method, **kw)
            _, pi_hi_a = model.bounds(lo[:, :k], hi[:, :k], lo[:, k:], hi[:, k:])
            _, pi_hi_terms = model.bounds(lo[:, :k], hi[:, :k], lo[:, k:], hi[:, k:], "terms")

        def run(test, m=model, pi=pi):  # the same splits for every column
            return colep_splits(pi, test, y, n_cal, m.cfg, cfg.n_splits, gen(cfg))

        clean_cov, clean_size = run(pi)
        pgd_plain, size_plain = run(pi_adv)
        cert_plain, _ = run(pi_lo_x)
        pgd_rob, size_rob = run(pi_hi_a)
        rows.append(_row(f"COLEP-{mode} (no certification)", eps, clean_cov, clean_size,
                         pgd_plain, cert_plain, size_plain))  # fmt: skip
        if mode == "classwise":  # COLEP's Thm. 2 term-wise circuit bounds, for comparison
            pgd_t, size_t = run(pi_hi_terms)
            rows.append(_row(f"COLEP-{mode} (certified, CROWN, term bounds)", eps, clean_cov,
                             clean_size, pgd_t, clean_cov, size_t))  # fmt: skip
        rows.append(_row(f"COLEP-{mode} (certified, CROWN)", eps, clean_cov, clean_size,
                         pgd_rob, clean_cov, size_rob))  # fmt: skip
    return rows


def gen(cfg: BenchConfig) -> torch.Generator:
    """The generator of the calibration/test splits (identical for every method and column)."""
    return torch.Generator().manual_seed(cfg.seed + 1)


def _row(method, eps, clean_cov, clean_size, pgd_cov, cert_cov, size) -> dict:
    return {
        "method": method,
        "eps": eps,
        "clean_cov": clean_cov.mean().item(),
        "clean_size": clean_size.mean().item(),
        "pgd_cov": pgd_cov.mean().item(),
        "cert_cov": cert_cov.mean().item(),
        "cert_cov_se": cert_cov.std().item() / math.sqrt(cert_cov.numel()),
        "size": size.mean().item(),
    }


def run_benchmark(task: Task, cfg: BenchConfig) -> tuple[list[dict], Models]:
    """All rows for every ε (see the module docstring for the columns)."""
    models = build_models(task, cfg)
    _, _, pool = split(task, cfg)
    x, y = task.x[pool], task.y[pool]
    rows = []
    for eps in cfg.eps:
        torch.manual_seed(cfg.seed + 2)
        rows += _single_rows(task, models, x, y, eps, cfg)
        rows += _colep_rows(task, models, x, y, eps, cfg)
    return rows, models


def markdown_table(rows: list[dict], eps_unit: str = "") -> str:
    """The results as a markdown table."""
    head = (
        f"| ε{eps_unit} | method | clean cov. | clean size | PGD cov. | certified cov. (lower "
        "bound) | set size under attack |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['eps']:g} | {r['method']} | {r['clean_cov']:.3f} | {r['clean_size']:.2f} | "
            f"{r['pgd_cov']:.3f} | {r['cert_cov']:.3f} ± {r['cert_cov_se']:.3f} | "
            f"{r['size']:.2f} |"
        )
    return "\n".join(lines)


def write_results(out, stem: str, text: str, rows: list[dict], title: str, alpha: float) -> None:
    """Write ``<stem>.md`` (text), ``<stem>.json`` (rows) atomically and ``<stem>.png``."""
    import json
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in ((f"{stem}.md", text), (f"{stem}.json", json.dumps(rows))):
        write_text(out / name, content)
    plot(rows, out / f"{stem}.png", title, alpha)


def plot(rows: list[dict], path, title: str, alpha: float = 0.1) -> None:
    """Certified coverage and set size vs ε for each method (two panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        eps = [r["eps"] for r in rs]
        if "term bounds" in method or "logit bounds" in method:
            continue
        style = "-o" if "no cert" not in method and "split CP" not in method else "--x"
        axes[0].plot(eps, [r["cert_cov"] for r in rs], style, label=method)
        axes[1].plot(eps, [r["size"] for r in rs], style, label=method)
    axes[0].axhline(1 - alpha, color="k", lw=0.8, ls=":")
    axes[0].set(xlabel="ε (ℓ∞)", ylabel="certified coverage (lower bound)", title=title)
    axes[1].set(xlabel="ε (ℓ∞)", ylabel="mean set size under PGD", title=title)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
