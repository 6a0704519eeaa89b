"""The coding engine's fingerprint: what an envelope records of the engine that coded it
(package versions, CPU features, n_ctx, schedule, width), so a reader can check it decodes
on the same one."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from collections.abc import Sequence

import llama_cpp
import numpy as np

from llmcompress_proto.v1 import compression_pb2 as pb

from .layout import Schedule
from .rows import IDENTITY

# Envelopes name the schedule by number (`EngineFingerprint.schedule_id`):
# how streams are laid out and evaluated, and how probabilities are
# quantized. Change the number whenever either changes: old envelopes are
# then refused, not misread.
SCHEDULES = {s.value: s for s in Schedule}
# Bit positions of the CPU features in `EngineFingerprint.cpu_features`. Only
# ever append: the bits are stored in envelopes. llama.cpp's build flags decide
# its kernels; numpy's runtime SIMD dispatch decides the float32 exp.
_LLAMA_FEATURES = (
    "SSE3", "SSSE3", "AVX", "AVX_VNNI", "AVX2", "F16C", "FMA", "BMI2", "AVX512",
    "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "NEON", "ARM_FMA",
    "FP16_VA", "MATMUL_INT8", "SVE", "DOTPROD", "SME", "RISCV_V", "VSX",
    "WASM_SIMD", "LLAMAFILE", "OPENMP", "REPACK", "KLEIDIAI",
)  # fmt: skip
_NUMPY_FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512_SPR", "ASIMD", "SVE")
_NUMPY_BIT0 = 32
_UNLISTED_BIT = 63  # a llama.cpp feature this list does not name yet


def cpu_feature_bits() -> int:
    """The CPU features the engine build and numpy use on this machine, as bits."""
    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    bits = 0
    for part in info.replace("|", "\n").splitlines():
        name, sep, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if not sep or value.strip() in ("", "0") or not name:
            continue
        if name in _LLAMA_FEATURES:
            bits |= 1 << _LLAMA_FEATURES.index(name)
        else:
            bits |= 1 << _UNLISTED_BIT
    np_features: dict[str, bool] = {}
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:  # numpy has no public API for its runtime SIMD dispatch
            np_features = importlib.import_module(module).__cpu_features__
            break
        except (ImportError, AttributeError):
            continue
    for i, name in enumerate(_NUMPY_FEATURES):
        if np_features.get(name):
            bits |= 1 << (_NUMPY_BIT0 + i)
    return bits


def cpu_feature_names(bits: int) -> str:
    names = [n for i, n in enumerate(_LLAMA_FEATURES) if bits >> i & 1]
    names += [f"numpy:{n}" for i, n in enumerate(_NUMPY_FEATURES) if bits >> (_NUMPY_BIT0 + i) & 1]
    if bits >> _UNLISTED_BIT & 1:
        names.append("unlisted")
    return ",".join(names) or "none"


def engine_version() -> str:
    """The llama-cpp-python, constriction and numpy versions, in that order: each can
    change logits or quantization. Bare versions, because every envelope stores them."""
    cx = importlib.metadata.version("constriction")
    return f"{llama_cpp.__version__},{cx},{np.__version__}"


def pack_versions(engine: str) -> list[int] | None:
    """`engine` as EngineFingerprint.versions, or None when a part does not pack exactly
    (a pre-release or a number of 1000 or more is stored as the string instead)."""
    packed = []
    for version in engine.split(","):
        parts = version.split(".")
        if len(parts) != 3 or not all(p.isdecimal() and int(p) < 1000 for p in parts):
            return None
        major, minor, patch = map(int, parts)
        packed.append(major * 1_000_000 + minor * 1000 + patch)
    return packed if unpack_versions(packed) == engine else None


def unpack_versions(packed: Sequence[int]) -> str:
    return ",".join(f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}" for v in packed)


def compact_fingerprint(
    engine: str,
    threads: int,
    cpu_features: int,
    n_ctx: int,
    *,
    schedule: Schedule = Schedule.T1,
    width: int = 1,
    row_model: int = IDENTITY,
    gpu_layers: int = 0,
) -> pb.EngineFingerprint:
    """The full fingerprint in format v2's form, which readers compare field by field
    (format v3 writes `written(...)` of it). Width 1, row model 0 and no GPU layers are left
    out (proto3 defaults); a wider one costs 2 bytes."""
    fp = pb.EngineFingerprint(
        threads=threads,
        schedule_id=schedule.value,
        cpu_features=cpu_features,
        n_ctx=n_ctx,
        width=width if width != 1 else 0,
        row_model=row_model,
        gpu_layers=gpu_layers,
    )
    packed = pack_versions(engine)
    if packed is None:
        fp.engine = engine
    else:
        fp.versions.extend(packed)
    return fp


def build_of(fp: pb.EngineFingerprint) -> int:
    """Format v3's `EngineFingerprint.build` of a full (v1 or v2) fingerprint: the first 4
    bytes of SHA-256 over the fields a reconstructing server must share with the writer."""
    fields = fingerprint_fields(fp)
    key = f"{fields['engine']}|{fp.cpu_features}|{fp.n_ctx}|{fp.gpu_layers}"
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") or 1


def written(full: pb.EngineFingerprint) -> pb.EngineFingerprint:
    """The fingerprint as format v3 stores it: the build's fields as their 4-byte digest (9
    bytes in all at width 1, against ~22 in v2's form)."""
    return pb.EngineFingerprint(
        threads=full.threads,
        schedule_id=full.schedule_id,
        width=full.width,
        row_model=full.row_model,
        build=build_of(full),
    )


def fingerprint_fields(fp: pb.EngineFingerprint) -> dict[str, str | int]:
    """The fields of a v1 or v2 fingerprint, in one form."""
    return {
        "engine": unpack_versions(fp.versions) if fp.versions else fp.engine,
        "threads": fp.threads,
        "schedule": f"t{fp.schedule_id}" if fp.schedule_id else fp.schedule,
        "n_ctx": fp.n_ctx,
        "width": fp.width or 1,
        "row_model": fp.row_model,
        "gpu_layers": fp.gpu_layers,
    }


def schedule_of(fp: pb.EngineFingerprint) -> Schedule | None:
    """The fingerprint's schedule, or None when this server does not know it."""
    name = fingerprint_fields(fp)["schedule"]
    number = str(name)[1:]
    return SCHEDULES.get(int(number)) if str(name)[:1] == "t" and number.isdecimal() else None
