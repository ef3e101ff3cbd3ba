"""Configuration: typed models, the loader, the environment layer."""

from bot.app.config.env import ENV_VARS, read_environment
from bot.app.config.load import DEFAULT_SOURCE, load_config, parse_config
from bot.app.config.models import Config
from bot.features.policy.config import PolicyMode
from bot.features.probes.config import Service

__all__ = [
    "DEFAULT_SOURCE",
    "ENV_VARS",
    "Config",
    "PolicyMode",
    "Service",
    "load_config",
    "parse_config",
    "read_environment",
]
