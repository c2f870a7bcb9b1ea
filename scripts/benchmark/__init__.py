"""Speed and memory of hf_flexattn against what it replaces: ``python -m scripts.benchmark --help``."""
