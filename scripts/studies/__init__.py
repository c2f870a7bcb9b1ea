"""The studies behind docs/studies.md, one module each: ``python -m scripts.studies.<name> --help``.

Each writes its results, report and (with ``--model-card``) its model card; ``--rewrite-card`` re-renders them from
the saved results.
"""
