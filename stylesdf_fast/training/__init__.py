"""StyleSDF training: config presets, losses, the two-stage loop, checkpoints (python -m stylesdf_fast.train)."""
from .config import PRESETS, TrainConfig, preset_config, validate_config
from .loop import latest_checkpoint, run_training, train_iteration

__all__ = ["PRESETS", "TrainConfig", "preset_config", "validate_config", "run_training", "latest_checkpoint", "train_iteration"]
