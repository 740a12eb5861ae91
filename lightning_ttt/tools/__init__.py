"""Command-line tools that are not Trainer-shaped (parity checks, benchmarks)."""
