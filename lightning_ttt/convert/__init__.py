"""Importers: the authors' JAX checkpoints and Hugging Face models into this project's model."""
