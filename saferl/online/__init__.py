"""Online RL on the 3D locomotion suites: multi-morphology TD3 with SET / baseline policies."""

from saferl.online.td3 import (
    EpisodeRecorder,
    TD3Config,
    TrainResult,
    build_model,
    critic_td_loss,
    demo_stage,
    evaluate,
    load_actor,
    make_vec_env,
    save_run,
    suite_agents,
    suite_max_limbs,
    train,
)

__all__ = [
    "EpisodeRecorder",
    "TD3Config",
    "TrainResult",
    "build_model",
    "critic_td_loss",
    "demo_stage",
    "evaluate",
    "load_actor",
    "make_vec_env",
    "save_run",
    "suite_agents",
    "suite_max_limbs",
    "train",
]
