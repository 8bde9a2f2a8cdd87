"""The run configuration: the single source of defaults and validation.

A run is one YAML file (plus ``key.sub=value`` overrides) validated before any model loads; errors name the key,
the bad value and what is allowed, with a did-you-mean for misspelt keys and choices. The modules:

- ``run``: `RunConfig`, the whole config, and the rules between its sections;
- ``sections``: the model, data, training and eval sections;
- ``methods``: the method settings and `METHOD_TRAITS`, one row of facts per method;
- ``mixture``: multi-task mixtures and curricula;
- ``sweep``: the hyperparameter search and how its keys name settings;
- ``loading``: YAML and overrides in, validated config out (and back to YAML);
- ``vocabulary``: the keys of configs written before `data.kind` and `objective`, read as those;
- ``overrides``, ``errors``, ``section``, ``home``: what those share.

Callers import from here.
"""

from tunelab.config.errors import ConfigError
from tunelab.config.home import tunelab_home
from tunelab.config.loading import build_config, config_to_yaml, load_config, with_values
from tunelab.config.methods import (
    METHOD_TRAITS,
    LearningRates,
    MethodConfig,
    MethodTraits,
    method_names,
    spoken_list,
)
from tunelab.config.mixture import MixtureConfig, MixtureTask, StageConfig
from tunelab.config.overrides import parse_overrides
from tunelab.config.run import RunConfig
from tunelab.config.sections import (
    DataConfig,
    EvalConfig,
    ModelConfig,
    Precision,
    PreferenceConfig,
    TrainingConfig,
)
from tunelab.config.sweep import SweepConfig, SweepParam

__all__ = [
    "METHOD_TRAITS",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LearningRates",
    "MethodConfig",
    "MethodTraits",
    "MixtureConfig",
    "MixtureTask",
    "ModelConfig",
    "Precision",
    "PreferenceConfig",
    "RunConfig",
    "StageConfig",
    "SweepConfig",
    "SweepParam",
    "TrainingConfig",
    "build_config",
    "config_to_yaml",
    "load_config",
    "method_names",
    "parse_overrides",
    "spoken_list",
    "tunelab_home",
    "with_values",
]
