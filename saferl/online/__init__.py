"""Online RL on the 3D locomotion suites: multi-morphology TD3 (the reference), SAC or PPO
(``TD3Config.algo``) with SET / baseline policies, several seeds as a resumable grid
(:func:`run_seeds`, one :func:`train_cell` per seed); a run with ``out=`` checkpoints itself
and resumes (:mod:`saferl.online.resume`)."""

from saferl.online.td3 import (
    ALGOS,
    EpisodeRecorder,
    TD3Config,
    TrainResult,
    budget,
    build_model,
    critic_td_loss,
    demo_stage,
    evaluate,
    load_actor,
    make_vec_env,
    run_seeds,
    save_run,
    saved_config,
    seed_summary,
    suite_agents,
    suite_max_limbs,
    train,
    train_cell,
    updates_made,
)

__all__ = [
    "ALGOS",
    "EpisodeRecorder",
    "TD3Config",
    "TrainResult",
    "budget",
    "build_model",
    "critic_td_loss",
    "demo_stage",
    "evaluate",
    "load_actor",
    "make_vec_env",
    "run_seeds",
    "save_run",
    "saved_config",
    "seed_summary",
    "suite_agents",
    "suite_max_limbs",
    "train",
    "train_cell",
    "updates_made",
]
