"""Speed and memory benchmarks (scripts that print; they never assert)."""
