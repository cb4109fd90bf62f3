"""The embedded default model and corpus, and text sources -> token windows."""

from darwin_modifier.data.cache import cache_dir
from darwin_modifier.data.calibration import calibration_dataset
from darwin_modifier.data.corpus import corpus_split, fetch_corpus
from darwin_modifier.data.default_model import DEFAULT_MODEL_NAME, fetch_default_model
from darwin_modifier.data.windows import load_texts, token_windows

__all__ = [
    "DEFAULT_MODEL_NAME",
    "cache_dir",
    "calibration_dataset",
    "corpus_split",
    "fetch_corpus",
    "fetch_default_model",
    "load_texts",
    "token_windows",
]
