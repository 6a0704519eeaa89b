"""The result cache (result_cache.py): keys, entries, the two tiers, single-flight, statistics."""

from .entries import CachedResult, CorruptEntry
from .keys import (
    SCHEMA,
    CacheableCodec,
    CacheParams,
    Recipe,
    cache_key,
    key_for,
    key_with,
    recipe_for,
)
from .result_cache import ResultCache
from .single_flight import SingleFlight
from .stats import TierStats
from .tiers import REDIS_NAMESPACE, MemoryTier, RedisTier

__all__ = [
    "REDIS_NAMESPACE",
    "SCHEMA",
    "CacheParams",
    "CacheableCodec",
    "CachedResult",
    "CorruptEntry",
    "MemoryTier",
    "Recipe",
    "RedisTier",
    "ResultCache",
    "SingleFlight",
    "TierStats",
    "cache_key",
    "key_for",
    "key_with",
    "recipe_for",
]
