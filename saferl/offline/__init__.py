"""Offline safe RL: FISOR, BC-All, BC-Safe, BCQ-Lag, CPQ and the DSRL evaluation protocol.

One file per algorithm; :mod:`saferl.offline.registry` names them (``METHODS``), every agent
follows :class:`~saferl.offline.trainer.OfflineAgent` and trains through
:func:`~saferl.offline.trainer.fit`. Datasets, metadata and rollouts come from
:mod:`saferl.data`.
"""

from saferl.offline.bc import BC, BCConfig, bc_loss, train_bc
from saferl.offline.bcq_lag import BCQLag, BCQLagConfig, train_bcq_lag
from saferl.offline.bench import (
    BenchConfig,
    dsrl_summary,
    load_tasks,
    markdown_table,
    result_path,
    run_bench,
    scatter_plot,
    write_results,
)
from saferl.offline.buffer import TransitionBuffer
from saferl.offline.cpq import CPQ, CPQConfig, train_cpq
from saferl.offline.demo import demo_stage, random_rollouts
from saferl.offline.evaluate import dsrl_scores, summarize
from saferl.offline.fisor import (
    FISOR,
    FISORConfig,
    FISORNets,
    actor_loss,
    constraint_signal,
    expectile_loss,
    feasibility_target,
    make_scheduler,
    policy_weights,
    q_h_loss,
    q_r_loss,
    reversed_expectile_loss,
    train_fisor,
    v_h_loss,
    v_r_loss,
    vp_betas,
)
from saferl.offline.networks import (
    MLP,
    EnsembleMLP,
    FourierFeatures,
    LNResNetNoise,
    ema_update,
    per_step_cost_threshold,
)
from saferl.offline.registry import METHODS, Method, get_method, make_config
from saferl.offline.trainer import AgentBase, OfflineAgent, config_from_dict, fit

__all__ = [
    "AgentBase", "BC", "BCConfig", "BCQLag", "BCQLagConfig", "BenchConfig", "CPQ", "CPQConfig",
    "EnsembleMLP", "FISOR", "FISORConfig", "FISORNets", "FourierFeatures", "LNResNetNoise",
    "METHODS", "MLP", "Method", "OfflineAgent", "TransitionBuffer", "actor_loss", "bc_loss",
    "config_from_dict", "constraint_signal", "demo_stage", "dsrl_scores", "dsrl_summary",
    "ema_update", "expectile_loss", "feasibility_target", "fit", "get_method", "load_tasks",
    "make_config", "make_scheduler", "markdown_table", "per_step_cost_threshold", "policy_weights",
    "q_h_loss", "q_r_loss", "random_rollouts", "result_path", "reversed_expectile_loss",
    "run_bench",
    "scatter_plot", "summarize", "train_bc", "train_bcq_lag", "train_cpq", "train_fisor",
    "v_h_loss", "v_r_loss", "vp_betas", "write_results",
]  # fmt: skip
