"""FISOR throughput: training iterations/s and action-selection latency (N = 16 candidates ×
T = 5 reverse diffusion steps, argmin Q_h) for a batch of states.

Training is timed at the reference batch sizes (actor 2048 = 2 × 1024, critics 256) and at the
small CPU-bench setting, side by side in one run; latency at several state batch sizes. Medians
over repeats (the machine is shared). Prints a markdown table, writes it and a plot under
experiments/results/ (or --out).

    python experiments/fisor_throughput.py            # CPU (or CUDA where available)
    python experiments/fisor_throughput.py --quick    # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from saferl.offline import FISOR, FISORConfig, TransitionBuffer


def synthetic_data(n: int, obs_dim: int, act_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random DSRL-shaped transitions (timing only; the values do not matter)."""
    rng = np.random.default_rng(seed)
    f = np.float32
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(f),
        "next_observations": rng.normal(size=(n, obs_dim)).astype(f),
        "actions": rng.uniform(-1, 1, (n, act_dim)).astype(f),
        "rewards": rng.normal(size=n).astype(f),
        "costs": (rng.random(n) < 0.2).astype(f),
        "terminals": np.zeros(n, f),
        "timeouts": (np.arange(n) % 1000 == 999).astype(f),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_training(cfg: FISORConfig, buffer: TransitionBuffer, device, iters: int, repeats: int):
    """Median iterations/s of ``FISOR.update`` (batch sampling included)."""
    agent = FISOR(buffer.obs_dim, buffer.act_dim, cfg, device)
    for _ in range(2):  # warm-up
        agent.update(buffer.sample(cfg.critic_batch_size), buffer.sample(cfg.actor_batch_size))
    rates = []
    for _ in range(repeats):
        sync(agent.device)
        start = time.perf_counter()
        for _ in range(iters):
            agent.update(buffer.sample(cfg.critic_batch_size), buffer.sample(cfg.actor_batch_size))
        sync(agent.device)
        rates.append(iters / (time.perf_counter() - start))
    return statistics.median(rates), agent


def time_action(agent: FISOR, batch: int, repeats: int) -> float:
    """Median seconds of one batched action selection for ``batch`` states."""
    obs = torch.randn(batch, agent.obs_dim, device=agent.device)
    agent.act_tensor(obs)
    times = []
    for _ in range(repeats):
        sync(agent.device)
        start = time.perf_counter()
        agent.act_tensor(obs)
        sync(agent.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--obs-dim", type=int, default=11, help="Hopper: 11")
    p.add_argument("--act-dim", type=int, default=3, help="Hopper: 3")
    p.add_argument("--iters", type=int, default=10, help="iterations per timing repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 20, 256])
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    settings = {
        "reference (actor 2×1024, critic 256)": FISORConfig(),
        "small batch (actor 2×128, critic 256)": FISORConfig(actor_batch_size=256),
        "CPU bench (width 64, actor 2×128)": FISORConfig(actor_batch_size=256, actor_width=64),
    }
    if args.quick:
        settings = {"quick (width 32, actor 2×16)": FISORConfig(
            actor_width=32, actor_blocks=1, critic_hidden=(32, 32), actor_batch_size=32,
            critic_batch_size=32)}  # fmt: skip
        args.iters, args.repeats, args.batches = 2, 1, [1, 4]
    buffer = TransitionBuffer(synthetic_data(5000, args.obs_dim, args.act_dim), device)

    hardware = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    lines = [
        f"FISOR throughput on {device.type} ({hardware or 'cpu'}, torch threads "
        f"{torch.get_num_threads()}), obs {args.obs_dim} / act {args.act_dim}; "
        f"median of {args.repeats} × {args.iters} iterations",
        "",
        "| setting | train it/s | " + " | ".join(f"act B={b} (ms)" for b in args.batches) + " |",
        "|---|---|" + "---|" * len(args.batches),
    ]
    results = {}
    for name, cfg in settings.items():
        rate, agent = time_training(cfg, buffer, device, args.iters, args.repeats)
        lat = [time_action(agent, b, args.repeats) for b in args.batches]
        results[name] = (rate, lat)
        cells = " | ".join(f"{1000 * t:.1f}" for t in lat)
        lines.append(f"| {name} | {rate:.2f} | {cells} |")
    names = list(results)
    if len(names) > 1:
        ratios = ", ".join(f"{n}: {results[n][0] / results[names[0]][0]:.2f}×" for n in names[1:])
        lines += ["", f"Training speed relative to the reference: {ratios}"]
    lines += ["", "Action selection: 16 candidates × 5 reverse steps per state with the EMA actor,"
              " then argmin of max-ensemble Q_h; latency is one batched call."]  # fmt: skip
    table = "\n".join(lines)
    print(table)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_{device.type}" + ("_quick" if args.quick else "")
    (out / f"fisor_throughput{tag}.md").write_text(table + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (_, lat) in results.items():
        ax.plot(args.batches, [1000 * t for t in lat], "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("states per call")
    ax.set_ylabel("action selection (ms)")
    ax.set_title(f"FISOR action selection, {device.type}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"fisor_throughput{tag}.png", dpi=120)
    plt.close(fig)
    return table


if __name__ == "__main__":
    main()
