"""The shrunk-model format on the transformers side; importing it registers the Auto
classes.

``register_for_auto_class`` makes ``save_pretrained`` copy the configuration and
modeling source into every checkpoint and write ``auto_map``, so
``trust_remote_code=True`` loads it where this package is not installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from darwin_modifier.format.configuration_darwinlm import (
    DarwinLMLlamaConfig,
    DarwinLMQwen2Config,
)
from darwin_modifier.format.modeling_darwinlm import (
    DarwinLMLlamaForCausalLM,
    DarwinLMLlamaModel,
    DarwinLMQwen2ForCausalLM,
    DarwinLMQwen2Model,
)

for _config, _base, _lm in (
    (DarwinLMLlamaConfig, DarwinLMLlamaModel, DarwinLMLlamaForCausalLM),
    (DarwinLMQwen2Config, DarwinLMQwen2Model, DarwinLMQwen2ForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)
    _config.register_for_auto_class()
    _lm.register_for_auto_class("AutoModelForCausalLM")

CONFIG_CLASSES = {
    DarwinLMLlamaConfig.model_type: DarwinLMLlamaConfig,
    DarwinLMQwen2Config.model_type: DarwinLMQwen2Config,
}
MODEL_CLASSES = {
    DarwinLMLlamaConfig.model_type: DarwinLMLlamaForCausalLM,
    DarwinLMQwen2Config.model_type: DarwinLMQwen2ForCausalLM,
}

__all__ = [
    "CONFIG_CLASSES",
    "MODEL_CLASSES",
    "DarwinLMLlamaConfig",
    "DarwinLMLlamaForCausalLM",
    "DarwinLMQwen2Config",
    "DarwinLMQwen2ForCausalLM",
]
