"""``saferl certify RUN_DIR``: certified action deviation (and FISOR's feasibility) of a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saferl.commands import _checks as c
from saferl.commands._checks import UsageError

METHODS = ["crown", "ibp", "crown-ibp"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "certify",
        help="certify a saved run's policy under l_inf observation perturbations",
        description="Load a run saved by `saferl train-online` or `saferl train-offline` "
        "(fisor, bc_all, bc_safe; safetensors, nothing unpickled), take states from a dataset "
        "or from fresh rollouts of the run's env, and bound the policy's action over the "
        "l_inf ball of radius --eps around each: certified action deviation (mean, max) and the "
        "fraction of states certified within --delta; for FISOR (its sampler's noise fixed, "
        "the argmin over candidates bounded) also the fraction whose chosen action is "
        "certified feasible (Q_h <= 0 under every perturbation). Prints the figures and writes "
        "them as JSON.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder of a saved run")
    p.add_argument("--eps", type=c.non_negative_float, default=0.01,
                   help="l_inf radius of the observation perturbation")  # fmt: skip
    p.add_argument("--method", default="crown", choices=METHODS, help="bound method")
    p.add_argument("--delta", type=c.non_negative_float, default=0.1,
                   help="deviation a state must be certified within")  # fmt: skip
    p.add_argument("--states", type=c.positive_int, default=256, help="states to certify")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default=None,
                     help="take the states from this DSRL-format file (default: offline "
                          "runs the dataset they were trained on, online runs fresh "
                          "rollouts)")  # fmt: skip
    src.add_argument("--rollout", action="store_true",
                     help="take the states from fresh rollouts of the run's env under its own "
                          "policy (online runs: the suite's training agents)")  # fmt: skip
    p.add_argument("--stepwise", action="store_true",
                   help="FISOR: bound the diffusion chain one reverse step at a time (looser, "
                        "several times faster with crown)")  # fmt: skip
    p.add_argument("--check-samples", type=c.non_negative_int, default=0,
                   help="also run this many perturbed observations per state through the "
                        "policy and count actions outside the bounds (0: no check)")  # fmt: skip
    p.add_argument("--batch", type=c.positive_int, default=64,
                   help="states per bound computation")  # fmt: skip
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the state sample, the rollouts and FISOR's sampler "
                        "noise")  # fmt: skip
    p.add_argument("--device", default=None, help=c.DEVICE_HELP)
    p.add_argument("--threads", type=c.positive_int, default=1, help="torch threads on CPU")
    p.add_argument("--out", default=None,
                   help="JSON file of the figures (default: RUN_DIR/certify.json)")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from certify import retain_freed_memory
    from saferl.certification import (
        certify_states,
        dataset_states,
        fisor_crown_seconds,
        load_run,
        recorded_dataset,
        rollout_states,
        run_kind,
        summary_lines,
    )
    from saferl.common import seeded, torch_threads, write_json

    # --- checks: the run, the state source and the output, before any work
    device = c.check_device(args.device)
    with c.user_errors():
        kind = run_kind(args.run_dir)
    out = c.check_output_file(args.out or Path(args.run_dir) / "certify.json", "--out file")
    if args.dataset is not None:
        c.check_input_file(args.dataset, "--dataset")
    with c.user_errors(f"cannot load run {args.run_dir!r}"):
        run_ = load_run(args.run_dir, device=device)
    dataset = args.dataset
    if dataset is None and not args.rollout and kind != "td3_actor":
        dataset = recorded_dataset(run_)
        if dataset is None:
            raise UsageError(f"run {args.run_dir!r} does not record an existing dataset; pass "
                             "--dataset PATH")  # fmt: skip
    if args.rollout and kind != "td3_actor" and recorded_dataset(run_) is None:
        raise UsageError(f"run {args.run_dir!r}: --rollout needs the env of the dataset it "
                         "was trained on, which its metrics.json does not name (or it is "
                         "gone)")  # fmt: skip

    # --- the work
    if device == "cpu":  # this program owns the process: keep CROWN's freed buffers in it
        retain_freed_memory()
    with torch_threads(args.threads), seeded(args.seed):
        if dataset is not None:
            with c.user_errors(f"--dataset {dataset!r}"):
                states = dataset_states(dataset, args.states, args.seed, run_.obs_dim)
            source = f"dataset {dataset}"
        else:
            states = rollout_states(run_, args.states, args.seed)
            source = "fresh rollouts"
        if kind == "fisor" and args.method == "crown" and device == "cpu":
            _warn_if_slow(fisor_crown_seconds(run_, len(states), args.stepwise), len(states),
                          args.stepwise)  # fmt: skip
        summary = certify_states(run_, states, args.eps, args.method, args.delta,
                                 batch=args.batch, seed=args.seed, progress=True,
                                 stepwise=args.stepwise,
                                 check_samples=args.check_samples)  # fmt: skip
    summary["source"] = source
    summary["device"] = device
    print("\n".join(summary_lines(summary)))
    print(f"  states from {source}; written to {out}")
    write_json(out, summary, indent=1)
    return 0


def _warn_if_slow(seconds: float, states: int, stepwise: bool, limit: float = 600.0) -> None:
    """One line on stderr when FISOR's CROWN certificate is expected to take over ``limit``
    seconds (the estimate of :func:`saferl.certification.fisor_crown_seconds`)."""
    if seconds <= limit:
        return
    faster = "fewer --states" if stepwise else "--stepwise (~5x faster, looser), fewer --states"
    print(f"warning: FISOR with crown on {states} states may take ~{seconds / 60:.0f} min on one "
          f"CPU thread; {faster} or --method ibp is quicker", file=sys.stderr)  # fmt: skip
