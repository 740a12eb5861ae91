"""The Transformer: sandwich-normed blocks, QK-norm, interleaved RoPE, SwiGLU, tied embeddings.

The last ``suffix_len`` blocks of an e2e model carry a *prime* MLP between attention and the
regular MLP. Its weights can be swapped for per-sequence fast weights, which is how the inner
loop (``lightning_ttt.ttt``) runs these blocks chunk by chunk with a carried window KV cache.

Each of these is the paper's default; the config can switch to the Llama family's choices instead
(pre-norm only, no QK-norm, half-split RoPE with Llama-3 scaling, grouped-query attention, q/k/v
biases, an untied head) so that pretrained models can be converted (``lightning_ttt.convert``).
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.attention import chunk_attention, choose_kernel, sequence_attention
from lightning_ttt.model.cache import KVCache
from lightning_ttt.model.layers import Llama3Scaling, RMSNorm, Rotary, SwiGLU
from lightning_ttt.model.loss import linear_nll, token_nll  # noqa: F401  (token_nll: re-exported)

FastWeights = dict[str, Tensor]  # "blocks.{i}.prime.w{1,2,3}" -> [B, out, in] (or [out, in])


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, hd, self.n_heads, self.n_kv_heads = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.kv_heads
        self.wq = nn.Linear(d, self.n_heads * hd, bias=cfg.qkv_bias)
        self.wk = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.wv = nn.Linear(d, self.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.wo = nn.Linear(self.n_heads * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(hd, eps=cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        scaling = None
        if cfg.rope_scaling == "llama3":
            scaling = Llama3Scaling(cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                                    cfg.rope_original_max_positions)
        self.rotary = Rotary(cfg.rope_theta, half=cfg.rope_layout == "half", scaling=scaling)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: [B, t, D] -> q: [B, H, t, hd], k, v: [B, Hkv, t, hd]; q and k are QK-normed (not rotated)."""
        split = lambda y, heads: y.unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, t, heads·hd] -> [B, heads, t, hd]
        q, k, v = split(self.wq(x), self.n_heads), split(self.wk(x), self.n_kv_heads), split(self.wv(x), self.n_kv_heads)
        return self.q_norm(q), self.k_norm(k), v

    def _merge(self, out: Tensor) -> Tensor:
        return self.wo(out.transpose(1, 2).flatten(-2))  # [B, H, t, hd] -> [B, t, H·hd] -> [B, t, D]

    def forward(self, x: Tensor, window: int | None, kernel: str) -> Tensor:
        """Whole sequence, absolute positions 0..T-1."""
        q, k, v = self._heads(x)
        return self._merge(sequence_attention(self.rotary(q), self.rotary(k), v, window, kernel))

    def forward_chunk(self, x: Tensor, cache: KVCache, start: int, window: int | None,
                      kernel: str) -> tuple[Tensor, KVCache]:
        """One chunk of C tokens at absolute positions start..start+C-1, attending into the cache.

        Queries and the chunk's keys are rotated once with their absolute positions; the chunk's keys
        enter the cache rotated, so cached keys are used as they are. Returns the cache after the chunk.
        """
        q, k, v = self._heads(x)
        seen, cache = cache.update(self.rotary(k, start), v, start, window)
        out = chunk_attention(self.rotary(q, start), seen.k, seen.v, seen.mask, seen.past, kernel,
                              causal_past=window is None)
        return self._merge(out), cache


class Block(nn.Module):
    """x += post(attn(pre(x))); [x += post(prime(pre(x)))]; x += post(mlp(pre(x))).

    Without ``post_norm`` the post-norms are identities (pre-norm only, as in the Llama family).
    """

    def __init__(self, cfg: ModelConfig, has_prime: bool) -> None:
        super().__init__()
        norm = lambda: RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        post = lambda: norm() if cfg.post_norm else nn.Identity()
        self.seq_norm, self.attn, self.seq_post_norm = norm(), Attention(cfg), post()
        self.has_prime = has_prime
        if has_prime:
            self.prime_norm, self.prime, self.prime_post_norm = norm(), SwiGLU(cfg.d_model, cfg.prime_width), post()
        self.ffn_norm, self.mlp, self.ffn_post_norm = norm(), SwiGLU(cfg.d_model, cfg.mlp_hidden), post()

    def _mlps(self, x: Tensor, prime_weights: dict[str, Tensor] | None) -> Tensor:
        if self.has_prime:
            x = x + self.prime_post_norm(self.prime(self.prime_norm(x), prime_weights))
        return x + self.ffn_post_norm(self.mlp(self.ffn_norm(x)))

    def forward(self, x: Tensor, window: int | None, kernel: str) -> Tensor:
        x = x + self.seq_post_norm(self.attn(self.seq_norm(x), window, kernel))
        return self._mlps(x, None)

    def forward_chunk(self, x: Tensor, cache: KVCache, start: int, window: int | None, kernel: str,
                      prime_weights: dict[str, Tensor] | None) -> tuple[Tensor, KVCache]:
        attn_out, cache = self.attn.forward_chunk(self.seq_norm(x), cache, start, window, kernel)
        return self._mlps(x + self.seq_post_norm(attn_out), prime_weights), cache


class Transformer(nn.Module):
    """Decoder-only LM. ``forward`` runs every block over the whole sequence (no TTT);
    ``prefix`` and ``suffix_chunk`` are the two halves the inner loop uses."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, has_prime=i >= cfg.prefix_len and cfg.has_prime)
                                    for i in range(cfg.n_layers))
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Plain normal(0, init_std) for the embedding and every linear, zero biases; norms at 1 (the official init)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.cfg.init_std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    # ------------------------------------------------------------------ kernels
    def sequence_kernel(self) -> str:
        """Kernel for whole-sequence attention (first-order gradients only)."""
        return choose_kernel(self.cfg.attention_kernel, whole_sequence=True, on_cuda=self.embed.weight.is_cuda)

    def chunk_kernel(self, double_backward: bool = False) -> str:
        """Kernel for a chunk attending into its cache; ``double_backward`` when gradients of gradients flow through it."""
        return choose_kernel(self.cfg.attention_kernel, whole_sequence=False, double_backward=double_backward)

    # ------------------------------------------------------------------ forward paths
    @property
    def head_weight(self) -> Tensor:
        """The output projection [V, D]: the embedding (tied head) or lm_head."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, h: Tensor) -> Tensor:
        """final_norm(h) @ embedᵀ (tied head) or @ lm_headᵀ. h: [B, t, D] -> [B, t, V]."""
        return self.final_norm(h) @ self.head_weight.T

    def nll(self, h: Tensor, targets: Tensor, fused: bool = False) -> Tensor:
        """token_nll(logits(h), targets) without the whole [B, t, V] logits (``model.loss``). [B, t, D] -> [B, t].
        ``fused`` allows a fused CUDA kernel where only first-order gradients are needed."""
        return linear_nll(h, self.final_norm, self.head_weight, targets, fused=fused)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Hidden states after every block, whole sequence, outer weights. [B, T] -> [B, T, D]."""
        return self._run_blocks(self.embed(input_ids), self.blocks)

    def prefix(self, input_ids: Tensor) -> Tensor:
        """Embedding and the blocks without fast weights, run once over the sequence. [B, T] -> [B, T, D]."""
        return self._run_blocks(self.embed(input_ids), self.blocks[: self.cfg.prefix_len])

    def _run_blocks(self, h: Tensor, blocks) -> Tensor:
        kernel, window = self.sequence_kernel(), self.cfg.attention_window
        for block in blocks:
            h = block(h, window, kernel)
        return h

    @property
    def suffix_blocks(self) -> list[Block]:
        return list(self.blocks[self.cfg.prefix_len:])

    def suffix_chunk(self, h: Tensor, fast: FastWeights, caches: list[KVCache], start: int,
                     create_graph: bool = False) -> tuple[Tensor, list[KVCache]]:
        """Run the suffix blocks on one chunk [B, C, D] with fast prime weights; returns h and new caches."""
        new_caches = []
        for s, (block, cache) in enumerate(zip(self.suffix_blocks, caches)):
            i = self.cfg.prefix_len + s
            weights = {name: fast[f"blocks.{i}.prime.{name}"] for name in ("w1", "w2", "w3")}
            # the inner gradient of an earlier prime MLP flows back through this block's attention
            kernel = self.chunk_kernel(double_backward=create_graph and s > 0)
            h, cache = block.forward_chunk(h, cache, start, self.cfg.attention_window, kernel, weights)
            new_caches.append(cache)
        return h, new_caches

    def fast_weights(self) -> FastWeights:
        """The outer (initial) prime weights: the inner loop's parameters, [out, in] each."""
        return {f"blocks.{i}.prime.{name}": w
                for i, block in enumerate(self.blocks) if block.has_prime
                for name, w in block.prime.weights().items()}


def masked_mean(nll: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over the last axis: Σ mask·nll / max(Σ mask, 1e-10). [..., t] -> [...]."""
    mask = mask.to(nll.dtype)
    return (nll * mask).sum(-1) / mask.sum(-1).clamp_min(1e-10)


def chunk_losses(nll: Tensor, mask: Tensor, chunk: int) -> Tensor:
    """Masked mean NLL of every chunk of ``chunk`` tokens. [B, T] -> [B, T // chunk]."""
    return masked_mean(nll.unflatten(-1, (-1, chunk)), mask.unflatten(-1, (-1, chunk)))
