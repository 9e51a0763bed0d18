"""Benchmark of the bound engine: fast vs dense CROWN and IBP vs a forward pass (side by side).

For each ReLU MLP (17-256-256-6 and 100-512-512-512-17, PyTorch default init, inputs ~ N(0, 1),
eps = 0.01, l_inf) and a batch of states it times, in one run and interleaved, medians over
repeats: a plain forward pass, IBP, fast CROWN (intermediate bounds only for unstable neurons) and
the dense reference CROWN (full A matrices). It checks fast == dense (max abs difference) and
prints the ratios dense/fast and IBP/forward plus the fraction of neurons that needed backward
bounds, then where each path spends its time (screen, intermediate rows, final bound) and the
dense/fast ratio a free screen would allow. On a GPU it also reports states/s at batch 4096.

``--baseline-rev REV`` also times this engine against the ``certify`` package of git revision REV
(copied to a scratch folder and imported as ``certify_base``), interleaved in one process:
IBP, CROWN and CROWN-IBP, medians of CPU time (on CPU; the machine is shared), the ratio
ours / theirs and the largest difference of the bounds (ours may be tighter, never looser).

    python experiments/bench_bounds.py            # full (CPU: minutes)
    python experiments/bench_bounds.py --quick    # tiny, for the test suite
    python experiments/bench_bounds.py --baseline-rev HEAD~3 --repeats 5
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from certify import CrownStats, compute_bounds
from saferl.common.io import write_text


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, device: str) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def bench_net(sizes, batch, eps, repeats, dense_repeats, device, seed=0) -> dict:
    """Interleaved timings (medians) and the fast/dense agreement for one network."""
    torch.manual_seed(seed)
    net = mlp(sizes).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    with torch.no_grad():
        stats_f, stats_d = CrownStats(), CrownStats()
        lf, uf = compute_bounds(net, x, eps, method="crown", fast=True, stats=stats_f)
        ld, ud = compute_bounds(net, x, eps, method="crown", fast=False, stats=stats_d)
        diff = float(torch.maximum((lf - ld).abs().max(), (uf - ud).abs().max()))
        times: dict[str, list[float]] = {"forward": [], "ibp": [], "fast": [], "dense": []}
        for _ in range(10 * repeats):  # cheap: more repeats, interleaved
            times["forward"].append(_time(lambda: net(x), device))
            times["ibp"].append(_time(lambda: compute_bounds(net, x, eps, "ibp"), device))
        run_f, run_d = CrownStats(), CrownStats()  # stage times summed over the timed runs
        for r in range(repeats):
            times["fast"].append(
                _time(lambda: compute_bounds(net, x, eps, "crown", stats=run_f), device)
            )
            if r < dense_repeats:
                times["dense"].append(
                    _time(
                        lambda: compute_bounds(net, x, eps, "crown", fast=False, stats=run_d),
                        device,
                    )
                )
    med = {k: statistics.median(v) for k, v in times.items()}
    stage_f = {k: v / repeats for k, v in run_f.seconds.items()}
    stage_d = {k: v / dense_repeats for k, v in run_d.seconds.items()}
    return {
        "net": "-".join(map(str, sizes)),
        "batch": batch,
        "forward_ms": 1e3 * med["forward"],
        "ibp_ms": 1e3 * med["ibp"],
        "fast_crown_ms": 1e3 * med["fast"],
        "dense_crown_ms": 1e3 * med["dense"],
        "dense_over_fast": med["dense"] / med["fast"],
        "ibp_over_forward": med["ibp"] / med["forward"],
        "max_abs_diff": diff,
        "rows_fraction": stats_f.intermediate_rows / max(stats_d.intermediate_rows, 1),
        "fast_stage_ms": {k: 1e3 * v for k, v in stage_f.items()},
        "dense_stage_ms": {k: 1e3 * v for k, v in stage_d.items()},
        # what dense/fast could reach if the fast path's screen cost nothing (Amdahl): the
        # final specification bound and the unstable rows remain
        "ceiling_free_screen": med["dense"] / (stage_f["rows"] + stage_f["final"]),
    }


def gpu_throughput(sizes, eps, device, batch=4096, repeats=20) -> dict:
    torch.manual_seed(0)
    net = mlp(sizes).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    out = {}
    with torch.no_grad():
        for method in ["ibp", "crown", "crown-ibp"]:
            compute_bounds(net, x, eps, method)
            t = statistics.median(
                _time(lambda m=method: compute_bounds(net, x, eps, m), device)
                for _ in range(repeats)
            )
            out[method] = batch / t
    return out


def stage_table(rows: list[dict]) -> str:
    """Where the time goes (mean ms per call): screen, intermediate rows, final bound."""
    lines = [
        "| network | path | screen ms | rows ms | final ms | dense/fast with a free screen |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        for path in ("fast", "dense"):
            st = r[f"{path}_stage_ms"]
            ceiling = f"{r['ceiling_free_screen']:.2f}x" if path == "fast" else ""
            lines.append(
                f"| {r['net']} | {path} | {st['screen']:.0f} | {st['rows']:.0f} | "
                f"{st['final']:.0f} | {ceiling} |"
            )
    return "\n".join(lines)


def load_baseline(rev: str):
    """``compute_bounds`` of the ``certify`` package at git revision ``rev``, imported as
    ``certify_base`` from a scratch copy (its imports renamed), beside this one."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout

    tmp = Path(tempfile.mkdtemp(prefix="certify_base_"))
    for name in git("ls-tree", "-r", "--name-only", rev, "certify").split():
        if name.endswith(".py"):
            text = re.sub(
                r"\b(from|import)(\s+)certify\b", r"\1\2certify_base", git("show", f"{rev}:{name}")
            )
            dest = tmp / ("certify_base" + name[len("certify") :])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
    sys.path.insert(0, str(tmp))
    return importlib.import_module("certify_base").compute_bounds


def _cpu_time(fn) -> float:
    """CPU seconds of the calling thread (torch runs on it with one thread): unlike wall time,
    not inflated while other processes hold the shared cores."""
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def bench_baseline(sizes, batch, eps, repeats, device, base_fn, seed=0) -> list[dict]:
    """Ours vs the baseline revision, interleaved per repeat (the order alternating): medians
    of CPU time (wall time on CUDA) and the bound change."""
    torch.manual_seed(seed)
    net = mlp(sizes).to(device)
    x = torch.randn(batch, sizes[0], device=device)
    rows = []
    with torch.no_grad():
        for method in ["ibp", "crown", "crown-ibp"]:
            reps = 10 * repeats if method == "ibp" else repeats
            ours, theirs = [], []
            lo, hi = compute_bounds(net, x, eps, method)
            blo, bhi = base_fn(net, x, eps, method)
            timer = (lambda f: _time(f, device)) if device.startswith("cuda") else _cpu_time
            for r in range(reps):
                pair = [(theirs, base_fn), (ours, compute_bounds)]
                for store, fn in pair if r % 2 == 0 else pair[::-1]:
                    store.append(timer(lambda f=fn, m=method: f(net, x, eps, m)))
            rows.append(
                {
                    "net": "-".join(map(str, sizes)),
                    "method": method,
                    "base_ms": 1e3 * statistics.median(theirs),
                    "ours_ms": 1e3 * statistics.median(ours),
                    "ratio": statistics.median(ours) / statistics.median(theirs),
                    "max_abs_diff": float(torch.maximum((lo - blo).abs(), (hi - bhi).abs()).max()),
                    "max_widening": float(((hi - lo) - (bhi - blo)).max()),
                }
            )
    return rows


def baseline_table(rows: list[dict], rev: str) -> str:
    lines = [
        f"| network | method | {rev} ms | ours ms | ours / {rev} | max abs diff | max widening |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['method']} | {r['base_ms']:.2f} | {r['ours_ms']:.2f} | "
            f"{r['ratio']:.3f} | {r['max_abs_diff']:.1e} | {r['max_widening']:.1e} |"
        )
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = (
        "| network | batch | forward ms | IBP ms | IBP/forward | fast CROWN ms | dense CROWN ms "
        "| dense/fast | rows fast/dense | max abs diff |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['net']} | {r['batch']} | {r['forward_ms']:.2f} | {r['ibp_ms']:.2f} | "
            f"{r['ibp_over_forward']:.2f}x | {r['fast_crown_ms']:.0f} | "
            f"{r['dense_crown_ms']:.0f} | "
            f"{r['dense_over_fast']:.2f}x | {r['rows_fraction']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny networks and batch (for tests)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--nets", default="17-256-256-6,100-512-512-512-17", help="comma-separated")
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dense-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machine)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument("--baseline-rev", default=None, help="git revision to time against")
    p.add_argument("--skip-dense", action="store_true", help="only the baseline comparison")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    nets = [[int(v) for v in n.split("-")] for n in args.nets.split(",")]
    batch, repeats, dense_repeats = args.batch, args.repeats, args.dense_repeats
    if args.quick:
        nets, batch, repeats, dense_repeats = [[17, 32, 32, 6]], 64, 3, 2
    print(f"device={args.device} threads={args.threads} eps={args.eps} (medians)")
    result: dict = {"device": args.device, "threads": args.threads, "eps": args.eps}
    if args.baseline_rev is not None:
        base_fn = load_baseline(args.baseline_rev)
        base_rows = [
            r
            for s in nets
            for r in bench_baseline(s, batch, args.eps, repeats, args.device, base_fn)
        ]
        print(baseline_table(base_rows, args.baseline_rev))
        result["baseline"] = {"rev": args.baseline_rev, "rows": base_rows}
    if not args.skip_dense:
        rows = [bench_net(s, batch, args.eps, repeats, dense_repeats, args.device) for s in nets]
        print(table(rows))
        print(stage_table(rows))
        result["rows"] = rows
    if args.device.startswith("cuda") and not args.quick:
        result["gpu_states_per_s_4096"] = {
            "-".join(map(str, s)): gpu_throughput(s, args.eps, args.device) for s in nets
        }
        print(json.dumps(result["gpu_states_per_s_4096"], indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "quick" if args.quick else f"{args.device.split(':')[0]}_{args.nets.replace(',', '_')}"
    if args.baseline_rev is not None and args.skip_dense:
        tag += "_vs_baseline"
    name = f"bounds_{tag}.json"
    write_text(out / name, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
