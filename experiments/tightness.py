"""Tightness of IBP (Mao et al., ICLR 2024) at small scale.

Reproduces three findings on ReLU MLPs: (a) at initialisation, tightness falls with width and
(b) with depth; (c) IBP training raises tightness while standard training does not. Networks use
PyTorch's default init; training is on a synthetic 10-class Gaussian-cluster task in 20 dims
(eps = 0.1, l_inf) with the margin specification merged into the last layer. Prints the tables,
writes experiments/results/tightness.png and tightness.json.

    python experiments/tightness.py [--quick] [--seed 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from certify import (  # noqa: E402
    CertifiedTrainingConfig,
    certified_loss,
    margin_spec,
    tightness,
)
from saferl.common.io import save_figure, write_text  # noqa: E402


def mlp(d: int, width: int, depth: int, k: int) -> nn.Sequential:
    """``depth`` hidden ReLU layers of ``width``."""
    layers: list[nn.Module] = []
    sizes = [d] + [width] * depth
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], k))


def data(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return centres[y] + 0.5 * torch.randn(n, d, generator=g), y


def mean_tightness(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
    C = None if y is None else margin_spec(y, 10)
    return float(tightness(net, x, C).mean())


def at_init(widths, depths, base_w, base_d, x, seeds) -> dict:
    """Tightness at init vs width (depth fixed) and vs depth (width fixed), mean over seeds."""
    res = {"width": {}, "depth": {}}
    for w in widths:
        vals = []
        for s in seeds:
            torch.manual_seed(s)
            vals.append(mean_tightness(mlp(x.shape[1], w, base_d, 10), x))
        res["width"][w] = sum(vals) / len(vals)
    for dpt in depths:
        vals = []
        for s in seeds:
            torch.manual_seed(s)
            vals.append(mean_tightness(mlp(x.shape[1], base_w, dpt, 10), x))
        res["depth"][dpt] = sum(vals) / len(vals)
    return res


def train(mode: str, x, y, xt, yt, width, depth, steps, eps, seed) -> list[tuple[int, float]]:
    """Train with 'standard' (cross-entropy) or 'ibp' loss; tightness curve on the test set."""
    torch.manual_seed(seed)
    net = mlp(x.shape[1], width, depth, 10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    cfg = CertifiedTrainingConfig(eps=eps, method="ibp", start=0, length=max(steps // 2, 1))
    curve = [(0, mean_tightness(net, xt, yt))]
    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (128,), generator=g)
        if mode == "ibp":
            loss, _ = certified_loss(net, x[idx], y[idx], step, cfg)
        else:
            loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(steps // 5, 1) == 0:
            curve.append((step, mean_tightness(net, xt, yt)))
    return curve


def plot(init: dict, curves: dict, path: Path) -> None:
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    w = sorted(init["width"])
    ax[0].plot(w, [init["width"][k] for k in w], "o-")
    ax[0].set(xscale="log", yscale="log", xlabel="width", ylabel="tightness", title="init: width")
    d = sorted(init["depth"])
    ax[1].plot(d, [init["depth"][k] for k in d], "o-")
    ax[1].set(yscale="log", xlabel="depth (hidden layers)", title="init: depth")
    for mode, c in curves.items():
        ax[2].plot([s for s, _ in c], [t for _, t in c], "o-", label=mode)
    ax[2].set(yscale="log", xlabel="training step", title="training", ylabel="tightness")
    ax[2].legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        widths, depths, seeds, steps, n = [8, 32, 128], [1, 2, 4], [0], 20, 256
    else:
        widths, depths, seeds, steps, n = (
            [8, 16, 32, 64, 128, 256, 512],
            [1, 2, 3, 4, 6, 8],
            [0, 1, 2],
            1500,
            4096,
        )
    x, y = data(n, 20, 10, args.seed)
    xt, yt = data(512, 20, 10, args.seed + 100)
    init = at_init(widths, depths, 64, 2, xt[:256], [args.seed + s for s in seeds])
    curves = {
        m: train(m, x, y, xt[:256], yt[:256], 64, 2, steps, 0.1, args.seed)
        for m in ["standard", "ibp"]
    }
    print("tightness at init vs width (depth 2):")
    print("| width | " + " | ".join(map(str, init["width"])) + " |")
    print("|---" * (len(init["width"]) + 1) + "|")
    print("| tightness | " + " | ".join(f"{v:.4f}" for v in init["width"].values()) + " |")
    print("tightness at init vs depth (width 64):")
    print("| depth | " + " | ".join(map(str, init["depth"])) + " |")
    print("|---" * (len(init["depth"]) + 1) + "|")
    print("| tightness | " + " | ".join(f"{v:.4f}" for v in init["depth"].values()) + " |")
    print("tightness during training (width 64, depth 2, eps 0.1, margins):")
    print("| training | start | end |\n|---|---|---|")
    for m, c in curves.items():
        print(f"| {m} | {c[0][1]:.4f} | {c[-1][1]:.4f} |")
    plot(init, curves, out / "tightness.png")
    res = {"init": init, "curves": curves, "seed": args.seed, "steps": steps, "quick": args.quick}
    name = "tightness_quick.json" if args.quick else "tightness.json"
    write_text(out / name, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
