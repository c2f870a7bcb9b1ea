"""What the repository runs beyond the library: fine-tuning and evaluation (``finetune``, ``evaluate_runs``), the
studies behind the README's results (``studies``), the benchmark behind its tables (``benchmark``) and the building
blocks they share (``recipes``). Not part of the installed ``hf_flexattn`` package.

Run them as modules from the repository root, e.g. ``python -m scripts.studies.perplexity --help``;
``python scripts/finetune.py`` (the main job) runs as a file too.
"""
