"""Cache keys: every input that shapes an envelope, hashed.

Codec hook: a codec opts in by defining

    def cache_params(self, opts: CompressOptions) -> CacheParams | None

returning every codec-side input that changes its output for `opts`: a codec
version (bump it when the output for the same input changes), the model name
and full sha256, and the options and settings that matter (verify, target
ratio, quality tier, zstd level, n_ctx, ...). Returning None (e.g. the model
identity is not known yet) skips the cache for that request. A codec without
the hook is never cached: a key that missed the model would serve envelopes
of a replaced model.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from typing import Protocol, TypeAlias, runtime_checkable

from ...codecs import CompressOptions
from ...core.domain import Mode
from ...core.envelope import FORMAT_VERSION

CacheParams = Mapping[str, str | int | float | bool]
# A key's recipe (mode, codec params), hashed: SHA-256's state before the text's digest.
Recipe: TypeAlias = "hashlib._Hash"  # a name in typeshed alone

# Bump when the key recipe or the entry format (entries.py) changes.
# 2: the text's sha256 follows the recipe's JSON instead of sitting in it.
SCHEMA = 2


@runtime_checkable
class CacheableCodec(Protocol):
    def cache_params(self, opts: CompressOptions) -> CacheParams | None: ...


def cache_key(data: bytes, mode: Mode, params: CacheParams) -> bytes:
    """SHA-256 over a canonical JSON of the mode and the codec's params, then the text's
    full sha256 (the JSON part is the same for every text asked the same way: built once)."""
    return key_with(_recipe_hash(mode, tuple(sorted(params.items()))), data)


@functools.lru_cache(maxsize=256)
def _recipe_hash(mode: Mode, params: tuple[tuple[str, str | int | float | bool], ...]) -> Recipe:
    # The recipe's part of the key, hashed once: each key copies this state.
    return hashlib.sha256(_recipe(mode, params))


def _recipe(mode: Mode, params: tuple[tuple[str, str | int | float | bool], ...]) -> bytes:
    recipe = {
        "schema": SCHEMA,
        "envelope_format": FORMAT_VERSION,
        "mode": mode.value,
        "codec": dict(params),
    }
    canonical = json.dumps(recipe, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return canonical.encode("utf-8")


def key_for(codec: object, data: bytes, mode: Mode, opts: CompressOptions) -> bytes | None:
    """The key, or None when the codec cannot name what shapes its output."""
    recipe = recipe_for(codec, mode, opts)
    return None if recipe is None else key_with(recipe, data)


def recipe_for(codec: object, mode: Mode, opts: CompressOptions) -> Recipe | None:
    """Everything in the key but the text, hashed; None when the codec cannot name what
    shapes its output. The same for every text asked the same way, so a caller coding many
    texts one way may keep it (`key_with`)."""
    cache_params = getattr(codec, "cache_params", None)  # CacheableCodec, checked cheaply
    if cache_params is None:
        return None
    params = cache_params(opts)
    if params is None:
        return None
    if opts.dictionary is not None:
        params = {**params, "dictionary": opts.dictionary.hex}
    return _recipe_hash(mode, tuple(sorted(params.items())))


def key_with(recipe: Recipe, data: bytes) -> bytes:
    """The key of `data` coded as `recipe` says."""
    hasher = recipe.copy()
    hasher.update(hashlib.sha256(data).digest())
    return hasher.digest()
