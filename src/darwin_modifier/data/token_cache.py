"""Token ids of a whole text collection, tokenized once per tokenizer.

Cutting windows from a corpus tokenizes all of it (the windows are a seeded sample of
the whole), which for the Python docs' training split is ~10 s on these CPUs, paid by
every calibration, search and training run. The ids depend only on the texts and the
tokenizer, so they are kept on disk under the cache directory, keyed by both.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from darwin_modifier.data.cache import cache_dir


def joined_ids(texts: Sequence[str], tokenizer) -> np.ndarray:
    """Every text's ids followed by EOS, in order (int64)."""
    key = _key(texts, tokenizer)
    path = None if key is None else cache_dir("tokens") / f"{key}.npy"
    if path is not None and path.exists():
        try:
            return np.load(path).astype(np.int64)
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # torn by a full disk: tokenize again
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for encoded in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(eos)
    array = np.asarray(ids, dtype=np.int64)
    if path is not None:
        # each process its own temporary name: ranks may fill the cache at once
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        try:
            with open(partial, "wb") as out:
                np.save(out, array.astype(np.int32))
            os.replace(partial, path)
        except OSError:  # a full or read-only cache: the run goes on without it
            partial.unlink(missing_ok=True)
    return array


def _key(texts: Sequence[str], tokenizer) -> str | None:
    """Hash of the texts and of the tokenizer's full definition; None (no cache) for
    tokenizers that cannot state theirs (slow, Python-only ones)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.eos_token_id is None:
        return None
    hasher = hashlib.sha256()
    hasher.update(backend.to_str().encode())
    hasher.update(str(tokenizer.eos_token_id).encode())
    for text in texts:
        hasher.update(hashlib.sha256(text.encode()).digest())
    return hasher.hexdigest()[:32]
