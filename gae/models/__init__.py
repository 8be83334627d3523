"""Policy and critic models: config, architectures (gpt, gru, hf), scoring, save/load."""

from gae.models.actor_critic import ActorCritic, build_model
from gae.models.config import MODEL_PRESETS, ModelConfig
from gae.models.io import load_model, read_model_config, save_model
from gae.models.scoring import ScoreOutput, score_responses

__all__ = [
    "MODEL_PRESETS",
    "ActorCritic",
    "ModelConfig",
    "ScoreOutput",
    "build_model",
    "load_model",
    "read_model_config",
    "save_model",
    "score_responses",
]
