"""The database on disk: per layer, per module, per level only what is kept.

Layout of a database directory::

    manifest.json          what it was built from, the ladders, per-level stats,
                           done layers
    layer_000.safetensors  ``{attn|mlp}.{count}.kept`` (int64) and ``.weight``
                           (kept columns)

A level is stored once per distinct kept count (ladders may repeat counts), and the
dense level (the model's own weight) and the empty level are not stored at all, so the
database is well under half of the authors' full-shape layout. Tensors are read lazily
through ``safe_open`` (memory-mapped): loading one module at one level touches only that
tensor. Each layer file is written to a temporary name and renamed, and the manifest is
rewritten after it (with the file's size), so a killed build resumes from the
finished layers. A listed layer whose file is missing or of another size (a copy cut
short, a disk that filled up) is dropped when the store opens and built again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from safetensors import safe_open
from safetensors.torch import save_file

from darwin_modifier.artifacts import digest, lock, replacing, require_same, write_json
from darwin_modifier.distributed import is_main
from darwin_modifier.plan import DenseShape

FORMAT_VERSION = 1
MODULES = ("attn", "mlp")  # self_attn.o_proj (heads) and mlp.down_proj (channels)


@dataclass(frozen=True)
class LevelEntry:
    """Kept dense units (query heads or MLP channels) and their OBS-updated columns."""

    kept: list[int]
    weight: torch.Tensor | None  # None: dense level (use the model's weight) or empty


class DatabaseStore:
    """Read/write access to one database directory."""

    def __init__(self, root: str | Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self.shape = DenseShape(**manifest["shape"])
        self.ladders: dict[str, list[int]] = manifest["ladders"]
        # Storage precision of the OBS weights; the authors store fp16, which halves an
        # fp32 model's database for a rounding error far below the pruning error.
        self.dtype = getattr(torch, manifest.get("storage_dtype", "float16"))
        self._handles: dict[int, object] = {}
        self.damaged: dict[int, str] = {}  # listed layers whose file is unusable
        self._owns_lock = False  # open_or_create's lock, until close()
        self._drop_damaged_layers()

    # ---- creation, resume, refusal --------------------------------------------------

    @classmethod
    def open_or_create(
        cls, root: str | Path, identity: dict, ladders: dict
    ) -> DatabaseStore:
        """Resume a partial database built from the same inputs, or start a new one.

        ``identity`` holds everything that decides the database's content (source
        model, calibration fingerprint, GQA mode, damping, dtype, shape); a directory
        built from anything else is refused instead of being silently mixed.
        """
        root = Path(root)
        path = root / "manifest.json"
        lock.acquire(root, "database_dir")  # released by close()
        if path.exists():
            try:
                store = cls.open(root)
                require_same(
                    {k: store.manifest.get(k) for k in [*identity, "ladders"]},
                    {**identity, "ladders": ladders},
                    what=f"database at {root} was built from different inputs",
                    fix="use another database directory or delete this one",
                )
            except BaseException:
                lock.release(root)  # refused: another run may use it
                raise
            store._owns_lock = True
            return store
        if not is_main():
            raise RuntimeError(
                f"rank 0 created the database at {root}, but this rank does not see "
                "its manifest; database_dir must be on a filesystem every rank shares"
            )
        root.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            **json.loads(json.dumps(identity)),
            "ladders": ladders,
            "layers": {},
        }
        store = cls(root, manifest)
        store._write_manifest()
        store._owns_lock = True
        return store

    @classmethod
    def open(cls, root: str | Path, config=None) -> DatabaseStore:
        """Open an existing database; with ``config``, refuse one built for another
        model."""
        root = Path(root)
        path = root / "manifest.json"
        if not path.exists():
            raise FileNotFoundError(f"no database at {root} (manifest.json is missing)")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"database manifest {path} is corrupt ({err}); rebuild it"
            ) from err
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"database at {root} has format {manifest.get('format_version')}, this "
                f"version reads {FORMAT_VERSION}; rebuild it"
            )
        store = cls(root, manifest)
        if config is not None and DenseShape.from_config(config) != store.shape:
            raise ValueError(
                f"database at {root} was built for a model of shape {store.shape}, not "
                f"{DenseShape.from_config(config)}; build one for this model"
            )
        return store

    def _drop_damaged_layers(self) -> None:
        sizes = self.manifest.setdefault("file_bytes", {})
        for key in list(self.manifest["layers"]):
            path = self._layer_path(int(key))
            expected = sizes.get(key)
            if not path.exists():
                self.damaged[int(key)] = f"{path.name} is missing"
            elif expected is not None and path.stat().st_size != expected:
                self.damaged[int(key)] = (
                    f"{path.name} has {path.stat().st_size} bytes, not {expected}"
                )
            else:
                continue
            del self.manifest["layers"][key]
            sizes.pop(key, None)
            logger.warning(
                f"database {self.root}: {self.damaged[int(key)]}; layer {key} will be "
                "built again"
            )

    # ---- writing ------------------------------------------------------------------

    def done_layers(self) -> set[int]:
        return {int(i) for i in self.manifest["layers"]}

    def is_complete(self) -> bool:
        return self.done_layers() == set(range(self.shape.num_layers))

    def require_complete(self) -> None:
        missing = sorted(set(range(self.shape.num_layers)) - self.done_layers())
        if missing:
            damaged = "".join(f"; {why}" for why in self.damaged.values())
            raise ValueError(
                f"database at {self.root} is incomplete: layers {missing} are missing"
                f"{damaged}; run the build again to resume it"
            )

    def write_layer(
        self, index: int, levels: dict[str, list], stats: dict[str, list]
    ) -> None:
        """Store one layer: ``levels[module]`` lists ``(count, kept, weight)`` per
        level."""
        self.write_layer_file(index, levels)
        self.record_layers({index: stats})

    def write_layer_file(self, index: int, levels: dict[str, list]) -> None:
        """The layer's tensors, not yet in the manifest (a resume rebuilds them until
        :meth:`record_layers` lists the layer)."""
        tensors: dict[str, torch.Tensor] = {}
        for module, entries in levels.items():
            total = self.ladders[module][0]
            for count, kept, weight in entries:
                key = f"{module}.{count}"
                if count in (0, total) or f"{key}.kept" in tensors:
                    continue
                tensors[f"{key}.kept"] = torch.as_tensor(kept, dtype=torch.int64)
                tensors[f"{key}.weight"] = (
                    weight.detach().to("cpu", self.dtype).contiguous()
                )
        with replacing(self._layer_path(index)) as partial:
            save_file(tensors, partial)
        self._handles.pop(index, None)

    def record_layers(self, stats: dict[int, dict]) -> None:
        """List written layers in the manifest. Every rank keeps the same manifest in
        memory; only the main rank writes it."""
        for index in sorted(stats):
            self.manifest["layers"][str(index)] = stats[index]
            size = self._layer_path(index).stat().st_size
            self.manifest["file_bytes"][str(index)] = size
            self.damaged.pop(index, None)
        if stats and is_main():
            self._write_manifest()

    def _write_manifest(self) -> None:
        write_json(self.root / "manifest.json", self.manifest)

    def digest(self) -> str:
        """Identifies this database's content: its inputs, ladders and every layer's
        measured stats (what a search built on it must not outlive)."""
        return digest(self.manifest)

    # ---- reading ------------------------------------------------------------------

    def entry(self, index: int, module: str, level: int) -> LevelEntry:
        """Kept units and weight of one module at one level (cheap, memory-mapped)."""
        kept = self.kept(index, module, level)
        count = self.ladders[module][level]
        if count in (0, self.ladders[module][0]):
            return LevelEntry(kept, None)
        # A copy: safetensors may hand out views of its memory map, which training a
        # candidate would then change for every later reader in this process.
        weight = self._handle(index).get_tensor(f"{module}.{count}.weight").clone()
        return LevelEntry(kept, weight)

    def kept(self, index: int, module: str, level: int) -> list[int]:
        """Kept dense units (query heads or MLP channels) of one module at one level:
        its shape, without reading its weight."""
        count = self.ladders[module][level]
        if count == self.ladders[module][0]:
            dense = (
                self.shape.num_heads
                if module == "attn"
                else self.shape.intermediate_size
            )
            return list(range(dense))
        if count == 0:
            return []
        return self._handle(index).get_tensor(f"{module}.{count}.kept").tolist()

    def params(self, index: int, module: str, level: int) -> int:
        """Physical parameters of the module's block at ``level`` in layer ``index``."""
        return self.layer_stats(index)[module][level]["params"]

    def layer_stats(self, index: int) -> dict:
        return self.manifest["layers"][str(index)]

    def _handle(self, index: int):
        if index not in self._handles:
            if str(index) not in self.manifest["layers"]:
                raise ValueError(f"layer {index} is not in the database at {self.root}")
            self._handles[index] = safe_open(self._layer_path(index), framework="pt")
        return self._handles[index]

    def _layer_path(self, index: int) -> Path:
        return self.root / f"layer_{index:03d}.safetensors"

    def close(self) -> None:
        """Let other runs use the directory (after :meth:`open_or_create`)."""
        self._handles.clear()
        if self._owns_lock:
            self._owns_lock = False
            lock.release(self.root)

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("layer_*.safetensors"))
