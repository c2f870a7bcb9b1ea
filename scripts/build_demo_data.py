"""Build the long-document demo corpus shipped in scripts/data/ from the Python 3.11 documentation sources.

The reST sources come from Debian's python3.11-doc package (PSF licence: scripts/data/LICENSE-python-docs.txt is
the docs' own license page):

    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/pydoc
    python scripts/build_demo_data.py --source /tmp/pydoc/usr/share/doc/python3.11/html/_sources

Documents of at least --min-chars characters are kept (whole), split train/test by a hash of their path.
"""

import argparse
import gzip
import hashlib
import json
import re
from pathlib import Path


def clean(text: str) -> str:
    """Light reST clean-up: drop directive lines and markup, keep the prose and code."""
    text = re.sub(r"^\.\. [a-z-]+::.*$", "", text, flags=re.M)
    text = re.sub(r"^\s*:[a-z-]+:.*$", "", text, flags=re.M)
    text = re.sub(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`", r"\1", text)
    text = re.sub(r"^[=\-~^*#+\"']{4,}\s*$", "", text, flags=re.M)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="the _sources folder of the Python docs")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data"))
    parser.add_argument("--min-chars", type=int, default=24000)
    parser.add_argument("--max-chars", type=int, default=40000, help="documents are cut to this length")
    parser.add_argument("--test-fraction", type=float, default=0.15)
    args = parser.parse_args()
    splits = {"train": [], "test": []}
    for path in sorted(Path(args.source).rglob("*.rst.txt")):
        text = clean(path.read_text(encoding="utf-8", errors="replace"))
        if len(text) < args.min_chars:
            continue
        name = str(path.relative_to(args.source))
        bucket = int(hashlib.sha1(name.encode()).hexdigest(), 16) % 1000 / 1000
        splits["test" if bucket < args.test_fraction else "train"].append({"id": name, "text": text[: args.max_chars]})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, docs in splits.items():
        with gzip.open(out / f"python_docs_{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            for doc in docs:
                f.write(json.dumps(doc) + "\n")
        print(split, len(docs), "documents")


if __name__ == "__main__":
    main()
