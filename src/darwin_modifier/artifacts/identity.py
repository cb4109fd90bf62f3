"""What a resumed job must share with the job it continues.

A directory that holds a job's partial results (database, search state, training
checkpoint) stores the identity of the inputs it was made from; resuming with other
inputs is refused with the difference named, instead of silently mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

import torch


def _jsonable(value):
    """``value`` as it reads back from JSON (configs may hold non-JSON values, such
    as a dtype: those as their text)."""
    return json.loads(json.dumps(value, default=str))


def digest(value) -> str:
    """A short, stable hash of a JSON-able value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokens_digest(rows: Iterable[torch.Tensor], ordered: bool = True) -> str:
    """Hash of token-id rows, with their count; ``ordered=False`` ignores the order
    (oneshot may shuffle calibration samples)."""
    return combine_row_digests(row_digests(rows), ordered)


def row_digests(rows: Iterable[torch.Tensor]) -> list[str]:
    """One hash per row: what ranks exchange to name all ranks' tokens at once."""
    return [
        hashlib.sha256(
            torch.as_tensor(row).to(torch.int64).numpy().tobytes()
        ).hexdigest()
        for row in rows
    ]


def combine_row_digests(digests: list[str], ordered: bool = True) -> str:
    """:func:`tokens_digest` of the rows the ``digests`` came from."""
    if not ordered:
        digests = sorted(digests)
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16] + (
        f"-{len(digests)}"
    )


def weights_digest(model: torch.nn.Module) -> str:
    """Fingerprint of a model's weights: names, shapes and a strided sample of every
    tensor (4,096 values each, so an 8B model on a GPU takes well under a second).

    What binds a directory to a model instead of its path: the same weights at
    another path match, other weights saved at the same path do not. Offloaded
    tensors on the meta device contribute their name and shape only.
    """
    hasher = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hasher.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
        hasher.update(sample.numpy().tobytes())
    return hasher.hexdigest()[:16]


def config_digest(config) -> str:
    """Hash of a model config's content, without where it was loaded from."""
    fields = {
        key: value
        for key, value in config.to_dict().items()
        if key not in ("_name_or_path", "transformers_version")
    }
    return digest(_jsonable(fields))


def require_same(stored: Mapping, current: Mapping, *, what: str, fix: str) -> None:
    """Refuse when ``stored`` (read back from disk) differs from ``current``.

    The message names every differing key: ``"{what} (key: stored a, now b); {fix}"``.
    """
    current = _jsonable(dict(current))
    keys = dict.fromkeys([*stored, *current])
    changed = [k for k in keys if stored.get(k) != current.get(k)]
    if changed:
        details = "; ".join(
            f"{k}: stored {_short(stored.get(k))}, now {_short(current.get(k))}"
            for k in changed
        )
        raise ValueError(f"{what} ({details}); {fix}")


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
