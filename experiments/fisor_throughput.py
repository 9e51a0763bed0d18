"""FISOR throughput: training iterations/s of this code beside an earlier revision's, and
action-selection latency (N = 16 candidates × T = 5 reverse diffusion steps, argmin Q_h).

Training is timed at the reference batch sizes (actor 2048 = 2 × 1024, critics 256) and at
smaller settings. ``--baseline-rev REV`` (default: the commit before the fused update, the
critics in one ensemble and the reference's update order) imports the ``saferl`` package of git
revision REV beside this one (as ``saferl_base``, from a scratch copy) and times both on the same
batches, interleaved repeat by repeat with the order alternating; the claim is the ratio of the
medians. On CPU each timing is the CPU time of the calling thread (torch on one thread runs
there), so other processes on shared cores inflate it little; on CUDA it is wall time after a
synchronize. ``--compile`` adds this code with ``FISORConfig(compile=True)`` (timed after its
warm-up; ``--compile-mode reduce-overhead`` for CUDA graphs).
Prints a markdown table, writes it and a plot under experiments/results/ (or --out).

    python experiments/fisor_throughput.py            # CPU (or CUDA where available)
    python experiments/fisor_throughput.py --quick    # seconds; what the test runs
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from saferl.offline import FISOR, FISORConfig, TransitionBuffer

BEFORE_REV = "104a32f"
"""The last commit before the fused FISOR update (four critic losses stepped together, then the
actor; Q_r, Q_h, V_r, V_h as separate nets)."""


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


def load_baseline(rev: str):
    """The ``saferl.offline`` package of git revision ``rev``, imported as
    ``saferl_base.offline`` from a scratch copy (its imports renamed), beside this one; None
    (with a note) where git or the revision is not at hand."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout

    try:
        names = git("ls-tree", "-r", "--name-only", rev, "saferl").split()
    except (OSError, subprocess.CalledProcessError) as err:
        print(f"note: no baseline ({rev!r} not readable with git: {err})", file=sys.stderr)
        return None
    tmp = Path(tempfile.mkdtemp(prefix="saferl_base_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    for name in names:
        if name.endswith(".py"):
            text = git("show", f"{rev}:{name}")
            text = re.sub(r"\b(from|import)(\s+)saferl\b", r"\1\2saferl_base", text)
            text = re.sub(r"([\"'])saferl\.", r"\1saferl_base.", text)  # lazy imports by name
            dest = tmp / ("saferl_base" + name[len("saferl") :])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("saferl_base.offline")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    """Seconds of ``fn()``: CPU time of this thread on CPU, wall time on CUDA."""
    if device.type != "cuda":
        start = time.thread_time()
        fn()
        return time.thread_time() - start
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_training(agents: dict, cfg, buffer: TransitionBuffer, iters: int, repeats: int):
    """Median iterations/s of each agent's ``update`` (batch sampling included), the agents
    interleaved within each repeat, their order alternating."""
    device = buffer.device

    def run(agent):
        def go():
            for _ in range(iters):
                agent.update(buffer.sample(cfg.critic_batch_size),
                             buffer.sample(cfg.actor_batch_size))  # fmt: skip

        return go

    for agent in agents.values():  # warm-up (and compilation)
        for _ in range(2):
            run(agent)()
    secs: dict[str, list[float]] = {name: [] for name in agents}
    order = list(agents)
    for r in range(repeats):
        for name in order if r % 2 == 0 else order[::-1]:
            secs[name].append(timed(run(agents[name]), device))
    return {name: iters / statistics.median(s) for name, s in secs.items()}


class _OpCounter(TorchDispatchMode):
    """Counts the aten operators that do work (not views, allocations or profiler marks)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        returns = func._schema.returns
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in returns)
        name = func._schema.name
        if not view and not name.startswith(("aten::empty", "profiler::", "aten::lift")):
            self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_iteration(agent, cfg, buffer: TransitionBuffer) -> int:
    """Operators one ``update`` dispatches on this device (after a warm-up iteration): on a GPU
    roughly its kernel launches, which bound a small update's speed there."""
    batches = buffer.sample(cfg.critic_batch_size), buffer.sample(cfg.actor_batch_size)
    agent.update(*batches)
    counter = _OpCounter()
    with counter:
        agent.update(*batches)
    return counter.count


def time_action(agent: FISOR, batch: int, repeats: int) -> float:
    """Median seconds of one batched action selection for ``batch`` states."""
    obs = torch.randn(batch, agent.obs_dim, device=agent.device)
    agent.act_tensor(obs)
    return statistics.median(timed(lambda: agent.act_tensor(obs), agent.device)
                             for _ in range(repeats))  # fmt: skip


def settings(quick: bool) -> dict[str, dict]:
    """FISORConfig keyword arguments per setting (the same for every version)."""
    if quick:
        return {"quick (width 32, actor 2×16)": dict(
            actor_width=32, actor_blocks=1, critic_hidden=(32, 32), actor_batch_size=32,
            critic_batch_size=32)}  # fmt: skip
    return {
        "reference (actor 2×1024, critic 256)": {},
        "small batch (actor 2×128, critic 256)": dict(actor_batch_size=256),
        "CPU bench (width 64, actor 2×128)": dict(actor_batch_size=256, actor_width=64),
        "tiny (width 32, critics 32-32, batches 32)": dict(
            actor_width=32, actor_blocks=1, critic_hidden=(32, 32), actor_batch_size=32,
            critic_batch_size=32),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    p.add_argument("--obs-dim", type=int, default=11, help="Hopper: 11")
    p.add_argument("--act-dim", type=int, default=3, help="Hopper: 3")
    p.add_argument("--iters", type=int, default=5, help="iterations per timing repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 20, 256])
    p.add_argument("--baseline-rev", default=BEFORE_REV,
                   help="git revision to time against ('none': no baseline)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="also time compile=True")
    p.add_argument("--compile-mode", default="default",
                   help="compile_mode with --compile (e.g. reduce-overhead)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny sizes, two repeats")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.quick:
        args.iters, args.repeats, args.batches = 2, 2, [1, 4]
    base = None if args.baseline_rev.lower() == "none" else load_baseline(args.baseline_rev)
    buffer = TransitionBuffer(synthetic_data(5000, args.obs_dim, args.act_dim), device)
    dims = (buffer.obs_dim, buffer.act_dim)

    variants = (["before"] if base else []) + ["after"] + (["after, compiled"] * args.compile)
    results = {}
    for name, kwargs in settings(args.quick).items():
        agents = {"after": FISOR(*dims, FISORConfig(**kwargs), device)}
        if base:
            agents["before"] = base.FISOR(*dims, base.FISORConfig(**kwargs), device)
        if args.compile:
            compiled = FISORConfig(**kwargs, compile=True, compile_mode=args.compile_mode)
            agents["after, compiled"] = FISOR(*dims, compiled, device)
        cfg = agents["after"].config
        ops = {v: ops_per_iteration(agents[v], cfg, buffer) for v in ("before", "after") if base}
        rates = time_training(agents, cfg, buffer, args.iters, args.repeats)
        lat = [time_action(agents["after"], b, args.repeats) for b in args.batches]
        results[name] = (rates, lat, ops)

    hardware = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    clock = "CPU time of the timing thread" if device.type == "cpu" else "wall time"
    before = f"`{args.baseline_rev}`" if base else "none"
    lines = [
        f"FISOR throughput on {device.type} ({hardware or 'cpu'}, torch threads "
        f"{torch.get_num_threads()}), obs {args.obs_dim} / act {args.act_dim}; medians of "
        f"{args.repeats} × {args.iters} iterations ({clock}); before = revision {before}, "
        "interleaved with after",
        "",
        "| setting | " + " | ".join(f"{v} it/s" for v in variants)
        + "".join(f" | {v} / before" for v in variants[1:] if base)
        + (" | ops/it before → after" if base else "")
        + " | " + " | ".join(f"act B={b} (ms)" for b in args.batches) + " |",
        "|---|" + "---|" * (len(variants) + (len(variants) if base else 0) + len(args.batches)),
    ]  # fmt: skip
    for name, (rates, lat, ops) in results.items():
        cells = [f"{rates[v]:.2f}" for v in variants]
        if base:
            cells += [f"{rates[v] / rates['before']:.2f}×" for v in variants[1:]]
            cells.append(f"{ops['before']} → {ops['after']}")
        cells += [f"{1000 * t:.1f}" for t in lat]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "it/s: training iterations per second (each: 2 actor updates, the value and "
              "critic updates, batch sampling). ops/it: aten operators one update dispatches on "
              "this device, views and allocations left out (on a GPU, about its kernel "
              "launches). Action selection (this code): 16 candidates × 5 reverse steps per "
              "state with the EMA actor, then argmin of max-ensemble target Q_h; latency is one "
              "batched call."]  # fmt: skip
    table = "\n".join(lines)
    print(table)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"_{device.type}" + ("_quick" if args.quick else "")
    (out / f"fisor_throughput{tag}.md").write_text(table + "\n")
    plot(results, variants, args.batches, device, out / f"fisor_throughput{tag}.png")
    return table


def plot(results: dict, variants: list[str], batches: list[int], device, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = np.arange(len(results))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ax1.bar(x + i * width, [r[v] for r, _, _ in results.values()], width, label=v)
    ax1.set_xticks(x + 0.4 - width / 2, [n.split(" (")[0] for n in results], fontsize=8)
    ax1.set_yscale("log")
    ax1.set_ylabel("training iterations / s")
    ax1.set_title(f"FISOR update, {device.type}")
    ax1.legend(fontsize=7)
    for name, (_, lat, _) in results.items():
        ax2.plot(batches, [1000 * t for t in lat], "o-", label=name)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("states per call")
    ax2.set_ylabel("action selection (ms)")
    ax2.set_title(f"FISOR action selection, {device.type}")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
