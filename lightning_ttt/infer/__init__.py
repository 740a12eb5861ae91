"""Inference: prefill and decoding with test-time training, sampling, export and loading."""

from lightning_ttt.infer.generate import GenerationOutput, Generator
from lightning_ttt.infer.sampling import SamplingConfig, sample
from lightning_ttt.infer.session import InferenceSession

__all__ = ["GenerationOutput", "Generator", "InferenceSession", "SamplingConfig", "sample"]
