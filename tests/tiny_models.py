"""Helpers shared by tests in several folders: O(1) random weights, a checkpoint from a real Trainer."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from lightning_ttt.lit.module import TTTLanguageModel

# Every Llama-family option at once: grouped-query attention, a head width that is not d_model/n_heads,
# half-split RoPE with Llama-3 scaling (original context 16 puts a tiny model's frequencies in all three
# bands), pre-norm only, no QK-norm, an untied head and q/k/v biases. For models with n_heads=2.
LLAMA_OPTIONS = dict(n_kv_heads=1, head_dim_override=6, rope_layout="half", rope_scaling="llama3", rope_factor=4.0,
                     rope_original_max_positions=16, post_norm=False, qk_norm=False, tie_embeddings=False,
                     qkv_bias=True)


def randomize_weights(model: torch.nn.Module, std: float) -> torch.nn.Module:
    """Norm scales 1 + 0.2·N(0, 1), matrices N(0, std²): every path (and every inner TTT step) matters."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, std)
    return model


def one_step_checkpoint(path: Path, method: str = "e2e") -> Path:
    """A debug-preset checkpoint written by a real one-step ``Trainer.fit`` on two random 64-token sequences."""
    ids = torch.randint(0, 256, (2, 65), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row[:-1], "targets": row[1:], "loss_mask": torch.ones(64)} for row in ids]
    torch.manual_seed(0)
    module = TTTLanguageModel(preset="debug", method=method, seq_len=64)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=path.parent)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    trainer.save_checkpoint(path)
    return path
