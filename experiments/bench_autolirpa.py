"""Our bound engine against auto_LiRPA (Xu et al., NeurIPS 2020), side by side in one process.

For each ReLU MLP (17-256-256-6 and 100-512-512-512-17, PyTorch default init, fixed seed), a
batch of states ~ N(0, 1) and an l_inf ball of radius eps = 0.01, it times IBP, CROWN and
CROWN-IBP of ``certify.compute_bounds`` and of auto_LiRPA's
``BoundedModule(net).compute_bounds(x=(BoundedTensor(x, PerturbationLpNorm(norm=inf,
eps=eps)),), method=...)``, interleaved (the order alternating every repeat, one warm-up call
each excluded), without autograd, on one CPU thread. Times are CPU seconds of the calling thread
(``time.thread_time``): on a shared machine they are not inflated while other processes hold the
cores, though a busy sibling core still slows the caches. Reported: medians and interquartile
ranges, the ratio of medians theirs / ours and the median of the per-repeat ratios, the mean
bound width ours / theirs, the largest difference of the bounds, and by how much ours is looser
anywhere (ours must lie inside theirs within 1e-6: same relaxations, and our CROWN screens
intermediate neurons with tighter reference bounds).

auto_LiRPA is not a dependency: pass the folder of its source release (0.7.x, from its
repository; PyPI's 0.3 does not import with torch 2.x) with ``--autolirpa``; it needs
``appdirs`` and ``graphviz`` at import time (install them into a scratch virtual environment).

    python experiments/bench_autolirpa.py --autolirpa /tmp/autolirpa_src
    python experiments/bench_autolirpa.py --autolirpa /tmp/autolirpa_src --quick
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

from certify import compute_bounds
from certify.bounds import gemm
from saferl.common.io import write_text

METHODS = {"ibp": "IBP", "crown": "CROWN", "crown-ibp": "CROWN-IBP"}
TOL = 1e-6


def mlp(sizes: list[int]) -> nn.Sequential:
    """ReLU MLP with PyTorch's default initialisation."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class AutoLirpaMissing(RuntimeError):
    """auto_LiRPA cannot be found or imported (the message says why)."""


def load_autolirpa(path: str | None):
    """The ``auto_LiRPA`` module from source folder ``path`` (put first on ``sys.path``), or the
    installed one when ``path`` is None. Raises ``AutoLirpaMissing`` with a one-line reason."""
    if path is not None:
        src = Path(path).expanduser().resolve()
        if not (src / "auto_LiRPA" / "__init__.py").is_file():
            raise AutoLirpaMissing(
                f"--autolirpa {path}: no auto_LiRPA/__init__.py there; pass the folder of "
                "auto_LiRPA's source release (the one holding setup.py and auto_LiRPA/)"
            )
        sys.path.insert(0, str(src))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("auto_LiRPA")
    except ModuleNotFoundError as err:
        if path is None and err.name == "auto_LiRPA":
            raise AutoLirpaMissing(
                "auto_LiRPA not found: pass --autolirpa PATH, the folder of its source release "
                "(e.g. git archive of github.com/Verified-Intelligence/auto_LiRPA)"
            ) from err
        raise AutoLirpaMissing(
            f"auto_LiRPA fails to import: missing module {err.name!r} (it needs appdirs and "
            "graphviz; install them into a scratch virtual environment)"
        ) from err
    except Exception as err:  # a broken copy raises many error types
        raise AutoLirpaMissing(f"auto_LiRPA fails to import: {type(err).__name__}: {err}") from err


def _cpu_time(fn) -> tuple[float, object]:
    """CPU seconds of the calling thread (torch runs on it with one thread) and the result."""
    t = time.thread_time()
    out = fn()
    return time.thread_time() - t, out


def _quartiles(v: list[float]) -> tuple[float, float]:
    if len(v) < 2:
        return v[0], v[0]
    q = statistics.quantiles(v, n=4, method="inclusive")
    return q[0], q[2]


def compare(ours: tuple, theirs: tuple) -> dict:
    """Mean widths, the largest difference, and where ours is looser than theirs by more than
    float32 rounding (``TOL * (1 + |their bound|)``: different summation orders)."""
    (lo, hi), (tlo, thi) = ours, theirs
    width, twidth = float((hi - lo).mean()), float((thi - tlo).mean())
    below, above = tlo - lo, hi - thi  # > 0 where ours is looser
    looser = (below > TOL * (1 + tlo.abs())) | (above > TOL * (1 + thi.abs()))
    return {
        "mean_width_ours": width,
        "mean_width_theirs": twidth,
        "width_ratio": width / twidth if twidth > 0 else math.nan,
        "max_abs_diff": float(torch.maximum((lo - tlo).abs(), (hi - thi).abs()).max()),
        "max_looser": float(torch.maximum(below, above).max()),
        "looser_count": int(looser.sum()),
        "bounds": 2 * lo.numel(),
        "inside": not bool(looser.any()),
    }


def bench_method(ours_fn, theirs_fn, repeats: int) -> dict:
    """Interleaved timings (order alternating, one warm-up each excluded) and the bounds."""
    ours_b, theirs_b = ours_fn(), theirs_fn()  # warm-up: traces, caches
    t_ours, t_theirs = [], []
    for r in range(repeats):
        pair = [(t_theirs, theirs_fn), (t_ours, ours_fn)]
        for store, fn in pair if r % 2 == 0 else pair[::-1]:
            store.append(_cpu_time(fn)[0])
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    ratios = [a / b for a, b in zip(t_theirs, t_ours, strict=True)]
    return {
        "ours_ms": 1e3 * mo,
        "theirs_ms": 1e3 * mt,
        "ours_iqr_ms": [1e3 * q for q in _quartiles(t_ours)],
        "theirs_iqr_ms": [1e3 * q for q in _quartiles(t_theirs)],
        "ratio": mt / mo,
        "ratio_median_pairs": statistics.median(ratios),
        "ratio_min_pairs": min(ratios),
        "repeats": repeats,
        **compare(ours_b, theirs_b),
    }


def bench_model(name, model, x, eps, repeats, al, methods) -> list[dict]:
    """Ours vs auto_LiRPA on ``model`` at the states ``x`` for every method."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bm = al.BoundedModule(model, torch.zeros_like(x[:1]), device=x.device)
    ptb = al.PerturbationLpNorm(norm=float("inf"), eps=eps)
    rows = []
    with torch.no_grad():
        for method in methods:

            def ours(m=method):
                return compute_bounds(model, x, eps, method=m)

            def theirs(m=method):
                return bm.compute_bounds(x=(al.BoundedTensor(x, ptb),), method=METHODS[m])

            reps = repeats if method == "crown" else 3 * repeats
            row = {
                "net": name,
                "method": method,
                "batch": x.shape[0],
                **bench_method(ours, theirs, reps),
            }
            if method == "crown":  # untimed: with auto_LiRPA's own (IBP-based) screen
                same = compute_bounds(model, x, eps, method=method, reference="ibp")
                row["ibp_screen"] = compare(same, theirs())
            print(
                f"  {name} {method}: ours {row['ours_ms']:.1f} ms, auto_LiRPA "
                f"{row['theirs_ms']:.1f} ms, {row['ratio']:.2f}x, width ratio "
                f"{row['width_ratio']:.6f}",
                flush=True,
            )
            rows.append(row)
    return rows


def set_actor(batch: int, seed: int, limbs: int = 4):
    """The SET actor (default config) for ``limbs`` limbs and states with every limb real, or
    a reason why not."""
    try:
        import numpy as np
        from gymnasium import spaces

        from envs.layout import ObsLayout
        from saferl.policies import build_actor

        layout = ObsLayout(limbs)
        obs = spaces.Box(-np.inf, np.inf, (layout.flat_dim,), np.float32)
        act = spaces.Box(-1.0, 1.0, (layout.action_dim,), np.float32)
        torch.manual_seed(seed)
        actor = build_actor("set", obs, act, device="cpu").eval()
        x = 0.5 * torch.randn(batch, layout.flat_dim)
        _, _, s1, m1, _ = layout.bounds()  # limb mask and parent indices: a 4-limb chain
        x[:, s1:m1] = 1.0
        x[:, m1:] = torch.arange(limbs) - 1.0
        return (actor, x), ""
    except Exception as err:  # optional part: report why it is skipped
        return None, f"SET actor not built: {type(err).__name__}: {err}"


def bench_set(batch, eps, repeats, al, seed) -> tuple[list[dict], str]:
    """The SET actor where both engines bound it (skipped with a reason otherwise)."""
    built, why = set_actor(batch, seed)
    if built is None:
        return [], why
    actor, x = built
    methods = []
    for method in ("ibp", "crown"):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                bm = al.BoundedModule(actor, x[:1])
                ptb = al.PerturbationLpNorm(norm=float("inf"), eps=eps)
                bm.compute_bounds(x=(al.BoundedTensor(x[:2], ptb),), method=METHODS[method])
        except Exception as err:
            why = f"{type(err).__name__}: {err}".splitlines()[0]
            return [], f"auto_LiRPA cannot bound the SET actor ({method}): {why}"
        try:
            with torch.no_grad():
                compute_bounds(actor, x[:2], eps, method=method)
        except Exception as err:
            return [], f"our engine cannot bound the SET actor ({method}): {err}"
        methods.append(method)
    return bench_model("SET actor", actor, x, eps, repeats, al, methods), ""


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| network | method | states | ours ms (IQR) | auto_LiRPA ms (IQR) | auto_LiRPA / ours "
        "| per-repeat ratio median (min) | width ours / theirs | max abs diff "
        "| ours looser: bounds (max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        oq, tq = r["ours_iqr_ms"], r["theirs_iqr_ms"]
        lines.append(
            f"| {r['net']} | {r['method']} | {r['batch']} | {r['ours_ms']:.1f} "
            f"({oq[0]:.1f}-{oq[1]:.1f}) | {r['theirs_ms']:.1f} ({tq[0]:.1f}-{tq[1]:.1f}) | "
            f"**{r['ratio']:.2f}x** | {r['ratio_median_pairs']:.2f}x ({r['ratio_min_pairs']:.2f}x) "
            f"| {r['width_ratio']:.6f} | {r['max_abs_diff']:.1e} | {r['looser_count']} of "
            f"{r['bounds']} ({max(r['max_looser'], 0):.1e}) |"
        )
    return "\n".join(lines)


def _loads(v) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else "?"


def markdown(result: dict) -> str:
    m = result["machine"]
    head = [
        "# Bound engine vs auto_LiRPA (CPU)",
        "",
        f"Written by `experiments/bench_autolirpa.py` on {result['date']}. Machine: {m['cpu']}, "
        f"{m['cores']} cores, shared with other jobs (1/5/15-min load average "
        f"{_loads(m.get('load_average'))} at the start, {_loads(result.get('load_end'))} at "
        "the end), "
        f"{result['threads']} torch thread. Python {m['python']}, torch {m['torch']}, auto_LiRPA "
        f"{result['auto_lirpa_version']} (source release). eps = {result['eps']} (l_inf), states "
        f"~ N(0, 1), PyTorch default init (seed {result['seed']}), no autograd. CPU time of the "
        f"calling thread; medians over {result['repeats']} interleaved repeats for CROWN and "
        f"{3 * result['repeats']} for IBP and CROWN-IBP (order alternating, warm-up excluded). "
        + (
            "Our matrix products: oneDNN where available (`certify.bounds.gemm`)."
            if result["onednn"]
            else "Our matrix products: torch.matmul / MKL (`--no-onednn`), as auto_LiRPA's."
        ),
        "",
        table(result["rows"]),
        "",
        "Width ours / theirs below 1: ours tighter. 'ours looser': the bounds where our "
        f"interval exceeds theirs by more than float32 rounding ({TOL:g} x (1 + |bound|)), and "
        "the largest excess.",
    ]
    for r in result["rows"]:
        if "ibp_screen" in r:
            q = r["ibp_screen"]
            head.append(
                f'- {r["net"]} CROWN with `reference="ibp"` (auto_LiRPA\'s screen of '
                f"intermediate neurons): width ratio {q['width_ratio']:.6f}, max abs diff "
                f"{q['max_abs_diff']:.1e}, looser in {q['looser_count']} of {q['bounds']} bounds."
            )
    if result.get("set_skipped"):
        head += ["", f"SET actor: skipped ({result['set_skipped']})."]
    return "\n".join(head) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--autolirpa", default=None, help="folder of auto_LiRPA's source release")
    p.add_argument("--quick", action="store_true", help="a tiny network and batch (for tests)")
    p.add_argument("--nets", default="17-256-256-6,100-512-512-512-17", help="comma-separated")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=7, help=">= 5; IBP and CROWN-IBP run 3x")
    p.add_argument("--methods", default="ibp,crown-ibp,crown", help="comma-separated")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set-actor", action="store_true", help="also the SET actor (if both bound it)")
    p.add_argument(
        "--no-onednn",
        action="store_true",
        help="our products through torch.matmul/MKL too (certify.bounds.gemm.ONEDNN = False)",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    nets = [[int(v) for v in n.split("-")] for n in args.nets.split(",")]
    batch, repeats = args.batch, args.repeats
    if args.quick:
        nets, batch, repeats = [[17, 32, 32, 6]], 64, 3
    try:
        al = load_autolirpa(args.autolirpa)
    except AutoLirpaMissing as err:
        print(err, file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    onednn, gemm.ONEDNN = gemm.ONEDNN, not args.no_onednn
    try:
        return run(args, al, nets, batch, repeats, methods)
    finally:
        gemm.ONEDNN = onednn


def run(args, al, nets, batch, repeats, methods) -> int:
    """Every network and method; prints the table and writes the JSON and markdown files."""
    result: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "threads": args.threads,
        "auto_lirpa_version": getattr(al, "__version__", "?"),
        "eps": args.eps,
        "batch": batch,
        "repeats": repeats,
        "seed": args.seed,
        "onednn": gemm.ONEDNN,
        "rows": [],
    }
    version = result["auto_lirpa_version"]
    print(f"threads={args.threads} eps={args.eps} states={batch} auto_LiRPA {version}")
    for sizes in nets:
        torch.manual_seed(args.seed)
        net = mlp(sizes)
        x = torch.randn(batch, sizes[0])
        result["rows"] += bench_model(
            "-".join(map(str, sizes)), net, x, args.eps, repeats, al, methods
        )
    if args.set_actor:
        rows, why = bench_set(batch, args.eps, repeats, al, args.seed)
        result["rows"] += rows
        if why:
            print(f"SET actor skipped: {why}")
            result["set_skipped"] = why
    result["load_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(table(result["rows"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = ("quick" if args.quick else "cpu") + ("_no_onednn" if args.no_onednn else "")
    write_text(out / f"bench_autolirpa_{tag}.json", json.dumps(result, indent=1))
    write_text(out / f"bench_autolirpa_{tag}.md", markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
