"""Offline safe RL: FISOR, BC-All, BC-Safe, BCQ-Lag and the DSRL evaluation protocol."""

from saferl.offline.bc import BC, BCConfig, bc_loss, train_bc
from saferl.offline.bcq_lag import BCQLag, BCQLagConfig, train_bcq_lag
from saferl.offline.bench import (
    BenchConfig,
    load_tasks,
    markdown_table,
    run_bench,
    scatter_plot,
    write_results,
)
from saferl.offline.dataset import (
    TaskInfo,
    TransitionBuffer,
    check_data,
    safe_trajectories,
    task_info,
)
from saferl.offline.demo import demo_stage, random_rollouts
from saferl.offline.evaluate import (
    EpisodeResults,
    dsrl_scores,
    evaluate_policy,
    make_env,
    normalized_cost,
    normalized_reward,
    summarize,
)
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

__all__ = [
    "BC", "BCConfig", "BCQLag", "BCQLagConfig", "BenchConfig", "EnsembleMLP", "EpisodeResults",
    "FISOR", "FISORConfig", "FISORNets", "FourierFeatures", "LNResNetNoise", "MLP",
    "TaskInfo", "TransitionBuffer", "actor_loss", "bc_loss", "check_data",
    "constraint_signal", "demo_stage", "dsrl_scores", "ema_update", "evaluate_policy",
    "expectile_loss", "feasibility_target", "load_tasks", "make_env",
    "make_scheduler", "markdown_table", "normalized_cost", "normalized_reward",
    "per_step_cost_threshold", "policy_weights", "q_h_loss", "q_r_loss", "random_rollouts",
    "reversed_expectile_loss", "run_bench", "safe_trajectories",
    "scatter_plot", "summarize", "task_info", "train_bc", "train_bcq_lag", "train_fisor",
    "v_h_loss", "v_r_loss", "vp_betas", "write_results",
]  # fmt: skip
