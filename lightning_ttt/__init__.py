"""lightning_ttt: End-to-End Test-Time Training (TTT-E2E) for long-context LMs on PyTorch Lightning."""

from lightning_ttt.config import METHODS, PRESETS, ModelConfig, ModelSettings

__version__ = "0.1.0"
__all__ = ["METHODS", "PRESETS", "ModelConfig", "ModelSettings", "__version__"]
