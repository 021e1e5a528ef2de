"""Training: typed configs + YAML presets, AdamW + schedules, checkpoints, DDP, the trainer.

- :mod:`.config`       ``ExperimentConfig`` (model/data/optim/trainer), presets, ``--set`` overrides
- :mod:`.optim`        AdamW, step / warm-up multi-step / cosine schedules, gradient clipping
- :mod:`.checkpoint`   safetensors + JSON checkpoints, written atomically, no pickle
- :mod:`.seed`         seeding, deterministic kernels, RNG state capture/restore
- :mod:`.distributed`  ``torchrun`` process groups, samplers, gathers
- :mod:`.runlog`       the per-epoch JSON Lines log
- :mod:`.trainer`      the training loop with evaluation, best/last checkpoints and resume
- :mod:`.pipeline`     wiring of datasets, models, evaluators for ``momentkit train/predict``
"""

from momentkit.training.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
)
from momentkit.training.config import (
    ConfigError,
    DataConfig,
    ExperimentConfig,
    OptimConfig,
    TrainerConfig,
    apply_overrides,
    build_config,
    list_presets,
    load_config,
)
from momentkit.training.distributed import DistInfo, cleanup_distributed, init_distributed
from momentkit.training.optim import build_optimizer, build_scheduler, lr_factor
from momentkit.training.seed import seed_everything
from momentkit.training.trainer import FitResult, Trainer, TrainingError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DistInfo",
    "ExperimentConfig",
    "FitResult",
    "OptimConfig",
    "Trainer",
    "TrainerConfig",
    "TrainingError",
    "apply_overrides",
    "build_config",
    "build_optimizer",
    "build_scheduler",
    "cleanup_distributed",
    "find_checkpoint",
    "init_distributed",
    "list_presets",
    "load_config",
    "load_state",
    "load_weights",
    "lr_factor",
    "save_checkpoint",
    "seed_everything",
]
