"""Certified robustness of trained policies: SET, transformer and MLP actors (TD3 on Hopper++)
and FISOR's diffusion policy, under l_inf observation perturbations.

For every trained online run found under ``--online`` (``<kind>_seed<k>/`` as
``experiments/set_suite.py`` saves them; the runs not there yet are listed as missing) and a
FISOR policy per offline task (trained here at a stated small budget on a dataset of random
rollouts of the task, or reused when ``--fisor-dir`` already holds it): the certified action
deviation (mean, max over states), the fraction of states certified within δ and the time per
1,000 states, at ε ∈ {0.001, 0.01, 0.05}, IBP vs CROWN (``saferl.certification``; FISOR: its
sampler's noise fixed, the argmin over its 16 candidates bounded, and the fraction whose chosen
action is certified feasible, Q_h ≤ 0; its CROWN bounds the chain step by step). Writes
``certify_policies.json`` and ``.md`` into ``--out``.

    python experiments/certify_policies.py            # ~20 min on one CPU core
    python experiments/certify_policies.py --quick    # a test: tiny runs trained here
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

KINDS = ("set", "transformer", "mlp")
EPSILONS = (0.001, 0.01, 0.05)
METHODS = ("ibp", "crown")
CHECK_SAMPLES = 32
"""Perturbed observations per state run through the policy (same noise) to count actions
outside the bounds (soundness check)."""
TASKS = ("SaferlPlanar-HopperVelocity-v1", "SaferlPlanar-SwimmerVelocity-v1")


def find_online_runs(
    root: Path, kinds, seeds, transformer_seeds=None
) -> tuple[list[tuple[str, int, Path]], list[str]]:
    """The saved runs ``root/<kind>_seed<k>`` (a run is saved once it has its checkpoint), and
    the names of those missing; the transformer's seeds are ``transformer_seeds`` when given
    (``set_suite.py`` trains fewer of them)."""
    found, missing = [], []
    for kind in kinds:
        kind_seeds = transformer_seeds if kind == "transformer" and transformer_seeds else seeds
        for seed in kind_seeds:
            folder = root / f"{kind}_seed{seed}"
            if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
                found.append((kind, seed, folder))
            else:
                missing.append(folder.name)
    return found, missing


def fisor_run(task: str, root: Path, steps: int, transitions: int, quick: bool) -> Path:
    """A FISOR run of ``task`` in ``root/<task>/`` (reused when saved): a dataset of random
    rollouts (``saferl.offline.demo.random_rollouts``) and FISOR at ``steps`` iterations with the
    demo's half-width networks (``DEMO_NETS``; ``quick``: tiny ones)."""
    from saferl.common import write_json
    from saferl.data import save_dataset
    from saferl.offline.demo import DEMO_NETS, random_rollouts
    from saferl.offline.fisor import FISORConfig, train_fisor

    folder = root / task
    if (folder / "model.safetensors").is_file() and (folder / "metrics.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    data, meta = random_rollouts(task, transitions=transitions, seed=0)
    save_dataset(folder / "dataset.hdf5", data, meta)
    nets = dict(DEMO_NETS)
    if quick:
        nets.update(actor_width=16, actor_blocks=1, critic_hidden=(16, 16), time_dim=8,
                    actor_batch_size=16, critic_batch_size=16)  # fmt: skip
    config = FISORConfig(**nets, steps=steps, seed=0, log_every=max(1, steps))
    start = time.perf_counter()
    agent, log = train_fisor(data, meta, config, "cpu")
    agent.save(folder)
    write_json(folder / "metrics.json", {"method": "fisor", "dataset": str(folder / "dataset.hdf5"),
                                         "train_log": log, "train_seconds":
                                         time.perf_counter() - start})  # fmt: skip
    return folder


def certify_run(run, states, eps_list, methods, delta, seed, label: str) -> list[dict]:
    from saferl.certification import certify_states

    rows = []
    for eps in eps_list:
        for method in methods:
            stepwise = run.kind == "fisor" and method != "ibp"
            s = certify_states(run, states, eps, method, delta, batch=64, seed=seed,
                               stepwise=stepwise, check_samples=CHECK_SAMPLES)  # fmt: skip
            s["label"] = label
            rows.append(s)
            print(f"  {label:24s} eps {eps:<6g} {method:9s} deviation mean "
                  f"{s['deviation_mean']:.4f} max {s['deviation_max']:.4f}, "
                  f"within delta {100 * s['fraction_within_delta']:5.1f}%, "
                  f"{s['seconds_per_1000_states']:.1f} s/1k states", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict], delta: float) -> str:
    head = (f"| policy | run | ε | method | states | deviation mean | deviation max | "
            f"within δ={delta:g} | feasible (FISOR) | s / 1,000 states | "
            f"outside / sampled |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        feasible = (f"{100 * r['fraction_feasible']:.0f}% (nominal "
                    f"{100 * r['fraction_feasible_nominal']:.0f}%)"
                    if r["kind"] == "fisor" else "")  # fmt: skip
        method = r["method"] + (" (stepwise)" if r.get("stepwise") else "")
        lines.append(f"| {r['policy']} | {r['label']} | {r['eps']:g} | {method} | {r['states']} "
                     f"| {r['deviation_mean']:.4f} | {r['deviation_max']:.4f} | "
                     f"{100 * r['fraction_within_delta']:.1f}% | {feasible} | "
                     f"{r['seconds_per_1000_states']:.1f} | "
                     f"{r['sampled_violations']} / {r['samples_checked']} |")  # fmt: skip
    return "\n".join(lines)


def summary_table(rows: list[dict], delta: float) -> str:
    """One row per (policy, task or kind, ε): IBP next to CROWN, means over the seeds of a kind
    (deviation mean, fraction within δ, s per 1,000 states; FISOR: fraction feasible)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        name = r["policy"] if r["kind"] != "fisor" else f"fisor {r['label']}"
        groups.setdefault((name, r["eps"]), {}).setdefault(r["method"], []).append(r)

    def mean(rs: list[dict], key: str) -> float:
        return sum(r[key] for r in rs) / len(rs)

    lines = [f"| policy | runs × states | ε | IBP deviation | CROWN deviation | CROWN / IBP | "
             f"within δ={delta:g} (IBP / CROWN) | feasible (CROWN) | s / 1,000 states "
             f"(IBP / CROWN) |", "|" + "---|" * 9]  # fmt: skip
    for (name, eps), by in groups.items():
        ibp, crown = by.get("ibp", []), by.get("crown", [])
        if not ibp or not crown:
            continue
        dev_i, dev_c = mean(ibp, "deviation_mean"), mean(crown, "deviation_mean")
        feasible = (f"{100 * mean(crown, 'fraction_feasible'):.0f}%"
                    if "fraction_feasible" in crown[0] else "")  # fmt: skip
        lines.append(f"| {name} | {len(crown)} × {crown[0]['states']} | {eps:g} | {dev_i:.4f} | "
                     f"{dev_c:.4f} | {dev_c / dev_i:.3f} | "
                     f"{100 * mean(ibp, 'fraction_within_delta'):.0f}% / "
                     f"{100 * mean(crown, 'fraction_within_delta'):.0f}% | {feasible} | "
                     f"{mean(ibp, 'seconds_per_1000_states'):.1f} / "
                     f"{mean(crown, 'seconds_per_1000_states'):.1f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--online", default="experiments/results/online/hopper_suite",
                   help="folder of the online runs <kind>_seed<k>/")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--transformer-seeds", type=int, nargs="+", default=[0],
                   help="seeds of the transformer runs (set_suite.py trains seed 0)")  # fmt: skip
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), help="offline tasks for FISOR")
    p.add_argument("--fisor-dir", default="experiments/results/certify_fisor",
                   help="FISOR runs per task (trained here when absent)")  # fmt: skip
    p.add_argument("--fisor-steps", type=int, default=1000, help="FISOR iterations per task")
    p.add_argument("--online-states", type=int, default=64, help="states per online run")
    p.add_argument("--fisor-states", type=int, default=64,
                   help="states per FISOR policy (CROWN step by step: ~0.5 s each on one "
                        "core)")  # fmt: skip
    p.add_argument("--delta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/results")
    p.add_argument("--quick", action="store_true", help="tiny runs trained here (a test)")
    p.add_argument("--table-only", action="store_true",
                   help="rewrite the summary table from the JSON already in --out")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import certify

    certify.retain_freed_memory()  # CROWN's freed buffers stay in this process (page faults)

    from saferl.certification import dataset_states, load_run, rollout_states, run_kind
    from saferl.common import write_json, write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "certify_policies_quick" if args.quick else "certify_policies"
    if args.table_only:
        saved = json.loads((out / f"{name}.json").read_text())
        write_summary(out / f"{name}_summary.md", saved["rows"], saved["settings"]["delta"])
        return 0
    eps_list, transitions = EPSILONS, 3000
    if args.quick:
        from saferl.cli import main as cli

        online = out / "quick_online"
        if not (online / "mlp_seed0" / "model.safetensors").is_file():
            assert cli(["train-online", "--suite", "Hopper++", "--agents", "hopper_3", "--policy",
                        "mlp", "--steps", "20", "--learning-starts", "10", "--batch-size", "8",
                        "--buffer-size", "50", "--eval-episodes", "1", "--eval-max-steps", "5",
                        "--device", "cpu", "--out", str(online / "mlp_seed0")]) == 0  # fmt: skip
        args.online, args.seeds, args.kinds = str(online), [0], ["mlp", "set"]
        args.tasks, args.fisor_dir, args.fisor_steps = args.tasks[:1], str(out / "quick_fisor"), 2
        args.online_states, args.fisor_states, eps_list, transitions = 4, 1, (0.001,), 300
    found, missing = find_online_runs(Path(args.online), args.kinds, args.seeds,
                                    args.transformer_seeds)  # fmt: skip
    print(f"online runs found: {[f.name for *_, f in found]}; missing: {missing}")
    rows: list[dict] = []
    for kind, seed, folder in found:
        run_kind(folder)
        run = load_run(folder, device="cpu")
        states = rollout_states(run, args.online_states, args.seed)
        rows += certify_run(run, states, eps_list, METHODS, args.delta, args.seed,
                            f"{kind}_seed{seed}")  # fmt: skip
    fisor_runs = {}
    for task in args.tasks:
        folder = fisor_run(task, Path(args.fisor_dir), args.fisor_steps, transitions, args.quick)
        fisor_runs[task] = str(folder)
        run = load_run(folder, device="cpu")
        states = dataset_states(folder / "dataset.hdf5", args.fisor_states, args.seed,
                                run.obs_dim)  # fmt: skip
        rows += certify_run(run, states, eps_list, METHODS, args.delta, args.seed,
                            task.removeprefix("SaferlPlanar-").removesuffix("-v1"))  # fmt: skip
    text = table(rows, args.delta)
    nets = "tiny networks" if args.quick else "the demo networks (DEMO_NETS: width 128, 2 blocks)"
    note = (f"Online runs: {args.online} (missing, not yet trained: {', '.join(missing) or 'none'}"
            f"); states from fresh rollouts of each run's training agents under its own policy. "
            f"FISOR: {args.fisor_steps} iterations with {nets} "
            f"on {transitions} transitions of random rollouts "
            f"per task, 16 candidates, noise drawn as its sampler draws it (seed {args.seed}); "
            f"CROWN bounds its chain one reverse step at a time (stepwise), IBP the whole chain; "
            f"'feasible': Q_h^target <= 0 certified for the chosen action at every perturbation. "
            f"CPU, one thread.")  # fmt: skip
    print(text)
    print(note)
    write_json(out / f"{name}.json", {"rows": rows, "missing_online_runs": missing,
                                       "fisor_runs": fisor_runs, "settings": vars(args)},
               indent=1)  # fmt: skip
    write_text(out / f"{name}.md", f"{text}\n\n{note}\n")
    write_summary(out / f"{name}_summary.md", rows, args.delta)
    return 0


def write_summary(path: Path, rows: list[dict], delta: float) -> None:
    """The summary table (:func:`summary_table`) as markdown."""
    from saferl.common import write_text

    text = summary_table(rows, delta)
    print(text)
    write_text(path, text + "\n")


if __name__ == "__main__":
    sys.exit(main())
