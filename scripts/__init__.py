"""What the repository runs beyond the library: fine-tuning and evaluation (``finetune``, ``evaluate_runs``), the
studies behind docs/studies.md (``studies``), the benchmark behind docs/benchmarks.md (``benchmark``) and the building
blocks they share (``recipes``). Not part of the installed ``hf_flexattn`` package.

Run them as modules from the repository root, e.g. ``python -m scripts.studies.perplexity --help``;
``python scripts/finetune.py`` (the main job) runs as a file too.
"""
