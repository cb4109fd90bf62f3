"""Database build on the embedded SmolLM2: time, peak memory, bytes on disk.

    python benchmarks/database.py --json results/database.json \
        [--samples 64 --seq-len 512 --out DIR --gqa-mode kv_group --threads N]

Builds the OBS database with :func:`darwin_modifier.modifier.entry.build_database`
(LLM Compressor's oneshot with ``DarwinLMModifier(generations=0, shrink=False)``) in a
temporary directory (or ``--out``), then reports the build wall time, the process's
peak resident memory, the database's bytes, and the bytes the authors' layout would
take for the same ladder: one full-shape tensor per module (``o_proj``, ``down_proj``)
per level, all levels, in fp16 as the authors store it. The same-dtype comparison
(full-shape tensors in the dtype this database stores) is reported next to it.

Requirement checked: ``db_bytes <= 0.6 * full_shape_bytes`` (fp16 full shape).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REQUIRED_RATIO = 0.6
AUTHORS_DTYPE = "float16"  # the authors' database: one fp16 tensor per module per level
AUTHORS_ELEMENT_SIZE = 2


def _rss_bytes(field: str = "VmRSS") -> int | None:
    """Current (VmRSS) or peak (VmHWM) resident memory of this process, Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _layer_tensors(root: Path):
    """``(file, key, shape, dtype)`` of every tensor, read from the headers."""
    from safetensors import safe_open

    for path in sorted(root.glob("layer_*.safetensors")):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                piece = f.get_slice(key)
                yield path, key, tuple(piece.get_shape()), piece.get_dtype()


_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}


def analyse(root: Path) -> dict:
    """Everything the report needs, from a finished database directory."""
    from darwin_modifier.pipeline import load_database

    store = load_database(root)
    shape = store.shape
    in_features = {
        "attn": shape.num_heads * shape.head_dim,  # o_proj input columns
        "mlp": shape.intermediate_size,  # down_proj input columns
    }
    names = {"attn": "self_attn.o_proj", "mlp": "mlp.down_proj"}
    num_levels = len(store.ladders["attn"])

    payload = {m: {"weight": 0, "kept": 0, "tensors": 0, "columns": 0} for m in names}
    weight_dtypes = set()
    for _, key, tshape, dtype in _layer_tensors(root):
        module, _count, part = key.split(".")
        nbytes = _DTYPE_SIZES[dtype]
        for n in tshape:
            nbytes *= n
        payload[module][part] += nbytes
        payload[module]["tensors"] += 1
        if part == "weight":
            weight_dtypes.add(dtype)
            payload[module]["columns"] += tshape[1]
    if len(weight_dtypes) != 1:
        raise ValueError(
            f"expected one weight dtype in the database, got {weight_dtypes}"
        )
    (stored_dtype,) = weight_dtypes
    stored_size = _DTYPE_SIZES[stored_dtype]

    db_bytes = store.nbytes()
    tensor_bytes = sum(p["weight"] + p["kept"] for p in payload.values())
    modules = {}
    full_fp16 = full_same = 0
    for module, name in names.items():
        ladder = store.ladders[module]
        elements = (
            shape.num_layers * num_levels * shape.hidden_size * in_features[module]
        )
        full_fp16 += elements * AUTHORS_ELEMENT_SIZE
        full_same += elements * stored_size
        stored_levels = sorted(
            {c for c in ladder if c not in (0, ladder[0])}, reverse=True
        )
        p = payload[module]
        modules[module] = {
            "matrix": name,
            "full_shape": [shape.hidden_size, in_features[module]],
            "ladder": ladder,
            "levels": num_levels,
            "distinct_stored_levels": len(stored_levels),
            "stored_counts": stored_levels,
            "not_stored": "dense level (the model's own weight) and the empty level",
            "stored_tensors": p["tensors"],
            "stored_weight_columns": p["columns"],
            "full_shape_equivalents_per_layer": p["columns"]
            / (shape.num_layers * in_features[module]),
            "weight_bytes": p["weight"],
            "kept_index_bytes": p["kept"],
            "full_shape_bytes_fp16": elements * AUTHORS_ELEMENT_SIZE,
            f"full_shape_bytes_{stored_dtype.lower()}": elements * stored_size,
        }
    weight_elements = sum(p["weight"] for p in payload.values()) // stored_size
    projected_fp16 = db_bytes - tensor_bytes  # headers
    projected_fp16 += weight_elements * AUTHORS_ELEMENT_SIZE
    projected_fp16 += sum(p["kept"] for p in payload.values())
    return {
        "model_shape": shape.__dict__,
        "gqa_mode": store.manifest.get("gqa_mode"),
        "calibration": store.manifest.get("calibration"),
        "model_dtype": store.manifest.get("dtype"),
        "db_dtype": stored_dtype,
        "db_bytes": db_bytes,
        "db_files": shape.num_layers + 1,
        "manifest_bytes": (root / "manifest.json").stat().st_size,
        "full_shape_bytes": full_fp16,
        "full_shape_dtype": AUTHORS_DTYPE,
        "full_shape_assumption": (
            f"one full-shape {AUTHORS_DTYPE} tensor per module (o_proj, down_proj) per "
            f"level, all {num_levels} levels, every layer, zeros for pruned columns, "
            "as the authors store it; tensor payload only (no file headers)"
        ),
        "ratio": db_bytes / full_fp16,
        "required_ratio": REQUIRED_RATIO,
        "meets_requirement": db_bytes <= REQUIRED_RATIO * full_fp16,
        "same_dtype": {
            "dtype": stored_dtype,
            "full_shape_bytes": full_same,
            "ratio": db_bytes / full_same,
        },
        "projected_db_bytes_if_stored_fp16": projected_fp16,
        "projected_ratio_if_stored_fp16": projected_fp16 / full_fp16,
        "modules": modules,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--samples", type=int, default=64, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per window")
    parser.add_argument(
        "--out", help="database directory to build in (kept); default: a temp dir"
    )
    parser.add_argument("--gqa-mode", default="kv_group", choices=["kv_group", "query"])
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: torch's own choice)"
    )
    args = parser.parse_args(argv)

    import torch

    from darwin_modifier.data import fetch_default_model
    from darwin_modifier.modifier.entry import build_database

    if args.threads:
        torch.set_num_threads(args.threads)
    model = fetch_default_model()
    work = Path(tempfile.mkdtemp(prefix="darwin_db_bench_"))
    root = Path(args.out) if args.out else work / "db"
    resumed = 0
    if (root / "manifest.json").exists():
        resumed = len(json.loads((root / "manifest.json").read_text())["layers"])
        print(f"warning: {root} already holds {resumed} layers; the build resumes")

    rss_before = _rss_bytes()
    load_before = os.getloadavg()
    start = time.perf_counter()
    try:
        build_database(
            model,
            root,
            num_samples=args.samples,
            seq_len=args.seq_len,
            gqa_mode=args.gqa_mode,
            search_dir=str(work / "search"),
        )
        wall = time.perf_counter() - start
        peak = _peak_rss_bytes()
        result = analyse(root)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "search", ignore_errors=True)

    result = {
        "model": str(model),
        "samples": args.samples,
        "seq_len": args.seq_len,
        "calibration_tokens": args.samples * args.seq_len,
        "build_wall_s": round(wall, 1),
        "layers_resumed_not_rebuilt": resumed,
        "peak_rss_bytes": peak,
        "peak_rss_gib": round(peak / 2**30, 3),
        "rss_before_build_bytes": rss_before,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before_after": [
            round(load_before[0], 2),
            round(os.getloadavg()[0], 2),
        ],
        "torch": torch.__version__,
        "python": platform.python_version(),
        **result,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"\nwritten to {out}")
    return result


def print_table(r: dict) -> None:
    mib = 2**20
    rows = [
        ("calibration", f"{r['samples']} x {r['seq_len']} tokens ({r['gqa_mode']})"),
        (
            "build wall time",
            f"{r['build_wall_s']:.1f} s ({r['torch_threads']} threads)",
        ),
        ("peak RSS", f"{r['peak_rss_bytes'] / mib:,.0f} MiB"),
        ("database", f"{r['db_bytes'] / mib:,.1f} MiB ({r['db_dtype']})"),
        (
            f"full shape, {r['full_shape_dtype']}",
            f"{r['full_shape_bytes'] / mib:,.1f} MiB -> ratio {r['ratio']:.3f} "
            f"(required <= {r['required_ratio']}: "
            f"{'met' if r['meets_requirement'] else 'NOT met'})",
        ),
        (
            f"full shape, {r['same_dtype']['dtype']}",
            f"{r['same_dtype']['full_shape_bytes'] / mib:,.1f} MiB -> ratio "
            f"{r['same_dtype']['ratio']:.3f}",
        ),
        (
            "if stored fp16",
            f"{r['projected_db_bytes_if_stored_fp16'] / mib:,.1f} MiB -> ratio "
            f"{r['projected_ratio_if_stored_fp16']:.3f} (projection)",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print()
    header = (
        f"{'module':<18}{'ladder':<48}{'stored':>7}{'tensors':>9}{'full-eq':>9}"
        f"{'MiB':>9}"
    )
    print(header)
    print("-" * len(header))
    for m in r["modules"].values():
        print(
            f"{m['matrix']:<18}{str(m['ladder']):<48}{m['distinct_stored_levels']:>7}"
            f"{m['stored_tensors']:>9}{m['full_shape_equivalents_per_layer']:>9.2f}"
            f"{(m['weight_bytes'] + m['kept_index_bytes']) / mib:>9.1f}"
        )
    print(
        "\nstored: distinct levels stored per layer; full-eq: stored columns per layer "
        "in units of one full-shape matrix (the authors' layout stores "
        f"{r['modules']['attn']['levels']})"
    )


if __name__ == "__main__":
    main()
