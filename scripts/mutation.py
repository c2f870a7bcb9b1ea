"""Mutation testing of hf_flexattn's own code (mutmut), opt-in: one command runs it and writes the report.

    pip install -e ".[dev,mutation]"
    python scripts/mutation.py                              # the default packages (mods, masks), then the report
    python scripts/mutation.py --packages mods              # one package
    python scripts/mutation.py --packages kernels.windows   # one module of a larger package
    python scripts/mutation.py --report-only                # rewrite the report from the last run's results

mutmut copies the package into a scratch folder (``build/mutation/<packages>/mutants``, ignored by git), makes every
mutant of the selected modules' functions, runs the selected tests once to record which test calls which function,
then runs each mutant against only the tests that call its function (``-x``: the first failure kills it). The tests
mutmut may choose from are the fast files mapped to each module below (``TESTS``): the selection per mutant is
mutmut's, from that map. Everything runs under ``nice -n 19`` with one thread per process.

The report (``docs/mutation_report.md`` unless ``--report`` says otherwise) gives the commit, the command, the machine,
the score per module and over all, and every surviving mutant with its diff: each survivor is either argued
equivalent in ``EQUIVALENT`` below (matched on its function and the mutated line, so that it outlives renumbering)
or listed as not handled. The score counts killed mutants (and timeouts) over the non-equivalent ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# module (dotted, under hf_flexattn) → the fast test files (or test ids) that exercise it; a package key expands to
# its modules. mutmut runs each mutant against the tests among these that call the mutated function.
_MODS_TESTS = ["tests/test_mods.py", "tests/test_ops.py"]
_MASKS_TESTS = ["tests/test_masks_edges.py", "tests/test_masks.py", "tests/test_ops.py"]
TESTS = {
    "mods.relative_position": _MODS_TESTS,
    "mods.relative_position_with_cls": _MODS_TESTS,
    "mods.continuous_position": _MODS_TESTS,
    "masks.core": _MASKS_TESTS,
    "masks.common": _MASKS_TESTS,
    "masks.natten": _MASKS_TESTS,
    "masks.windows": _MASKS_TESTS,
    "masks.batch": _MASKS_TESTS,
    "kernels.dense": ["tests/test_kernels.py", "tests/test_ops.py"],
    "kernels.windows": ["tests/test_kernels.py", "tests/test_ops.py"],
}
DEFAULT_PACKAGES = ["mods", "masks"]

# Surviving mutants argued equivalent (no input can tell them from the code): (module, function, mutated line as
# mutmut writes it, stripped) → why. A survivor whose line is not here is reported as not handled.
EQUIVALENT: dict[tuple[str, str, str], str] = {}


def modules_of(packages: list[str]) -> list[str]:
    """The modules (keys of ``TESTS``) that ``packages`` name: a package ("masks") or a module ("masks.core")."""
    modules = []
    for name in packages:
        matched = [m for m in TESTS if m == name or m.startswith(name + ".")]
        if not matched:
            known = sorted({m.split(".")[0] for m in TESTS} | set(TESTS))
            raise ValueError(f"--packages: {name!r} is not mapped to tests; expected one of {known}")
        modules += [m for m in matched if m not in modules]
    return modules


def mutmut_config(modules: list[str]) -> str:
    """The [tool.mutmut] section for ``modules``: the whole package is copied, only their files are mutated."""
    only = [f"hf_flexattn/{m.replace('.', '/')}.py" for m in modules]
    tests = sorted({t for m in modules for t in TESTS[m] if (REPO / t.split("::")[0]).exists()})
    return "\n".join(
        [
            "",
            "[tool.mutmut]",
            'source_paths = ["hf_flexattn"]',
            f"only_mutate = {json.dumps(only)}",
            f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
            'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore"]',
            # torch is not fork-safe once it has run: fork the mutants from a server that has only imported
            'process_isolation = "forkserver"',
            "use_git_change_detection = false",
            "",
        ]
    )


def prepare(workdir: Path, modules: list[str]) -> None:
    """A scratch copy of what mutmut needs (the package, the tests, pyproject with the section above)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("hf_flexattn", "tests", "scripts"):
        if (workdir / name).exists():
            shutil.rmtree(workdir / name)
        shutil.copytree(REPO / name, workdir / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    pyproject = (REPO / "pyproject.toml").read_text()
    (workdir / "pyproject.toml").write_text(pyproject + mutmut_config(modules))


def run_mutmut(workdir: Path, max_children: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = ["nice", "-n", "19", sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    start = time.monotonic()
    subprocess.run(command, cwd=workdir, env=env, check=False)
    return time.monotonic() - start


def read_results(workdir: Path, modules: list[str]) -> dict[str, dict[str, str]]:
    """module → {mutant name: status}, from mutmut's per-file metadata."""
    from mutmut.stats import status_by_exit_code  # the opt-in extra: imported only where used

    results = {}
    for module in modules:
        meta = workdir / "mutants" / "hf_flexattn" / (module.replace(".", "/") + ".py.meta")
        if not meta.exists():
            results[module] = {}
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        results[module] = {name: status_by_exit_code[code] for name, code in codes.items()}
    return results


def mutant_diff(workdir: Path, name: str) -> str:
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", name], cwd=workdir, capture_output=True, text=True, check=False
    )
    return shown.stdout.strip()


def mutated_lines(diff: str) -> list[str]:
    return [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]


def function_of(name: str) -> str:
    """``hf_flexattn.masks.core.x_sliding_window__mutmut_3`` → ``sliding_window`` (methods: ``Class.method``)."""
    last = name.split(".")[-1]
    last = re.sub(r"__mutmut_\d+$", "", last)
    last = re.sub(r"^x[_ǁ]", "", last)
    return last.replace("ǁ", ".")


def equivalence_of(module: str, name: str, diff: str) -> str | None:
    for line in mutated_lines(diff):
        why = EQUIVALENT.get((module, function_of(name), line))
        if why:
            return why
    return None


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()


def write_report(path: Path, workdir: Path, modules: list[str], info: dict) -> float:
    results = read_results(workdir, modules)
    rows, survivors = [], []
    totals = dict(killed=0, equivalent=0, survived=0, untested=0, total=0)
    for module in modules:
        statuses = results[module]
        killed = sum(s in ("killed", "timeout", "segfault", "caught by type check") for s in statuses.values())
        surviving = sorted(n for n, s in statuses.items() if s in ("survived", "suspicious"))
        untested = sorted(n for n, s in statuses.items() if s in ("no tests", "not checked", "skipped"))
        equivalent = 0
        for name in surviving + untested:
            diff = mutant_diff(workdir, name)
            why = equivalence_of(module, name, diff)
            equivalent += why is not None
            survivors.append((module, name, statuses[name], diff, why))
        survived = len(surviving) + len(untested) - equivalent
        relevant = len(statuses) - equivalent
        score = killed / relevant if relevant else float("nan")
        rows.append(f"| hf_flexattn.{module} | {len(statuses)} | {killed} | {equivalent} | {survived} | {score:.1%} |")
        totals["killed"] += killed
        totals["equivalent"] += equivalent
        totals["survived"] += survived
        totals["total"] += len(statuses)
    relevant = totals["total"] - totals["equivalent"]
    score = totals["killed"] / relevant if relevant else float("nan")
    lines = [
        "# Mutation report",
        "",
        'Generated by `scripts/mutation.py` (mutmut); do not edit by hand. See CONTRIBUTING.md, "Mutation testing".',
        "",
        f"- Commit: `{info['commit']}`{' (with uncommitted changes)' if info['dirty'] else ''}",
        f"- Command: `{info['command']}`",
        f"- Machine: {info['machine']}; run took {info['minutes']:.0f} min (load average at the end: {info['load']})",
        f"- Date: {info['date']}",
        "",
        "Score = killed (a selected test failed, or the mutant timed out) / (mutants − argued equivalent). "
        "A mutant no selected test calls counts as surviving.",
        "",
        "| module | mutants | killed | equivalent | surviving | score |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        f"| **all** | {totals['total']} | {totals['killed']} | {totals['equivalent']} | {totals['survived']} "
        f"| **{score:.1%}** |",
        "",
        "## Surviving mutants",
        "",
    ]
    if not survivors:
        lines.append("None.")
    for _module, name, status, diff, why in survivors:
        verdict = f"equivalent: {why}" if why else f"**not handled** ({status})"
        lines += [f"### `{name}`", "", verdict, "", "```diff", diff, "```", ""]
    path.write_text("\n".join(lines).rstrip() + "\n")
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", nargs="+", default=DEFAULT_PACKAGES, help="packages or modules under hf_flexattn")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "mutation_report.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the last run's results")
    args = parser.parse_args()
    modules = modules_of(args.packages)
    workdir = REPO / "build" / "mutation" / "-".join(args.packages)
    run_info = workdir / "run.json"  # what the run was (commit, time, load), kept for --report-only
    if not args.report_only:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--", "hf_flexattn", "tests"))
        prepare(workdir, modules)
        minutes = run_mutmut(workdir, args.max_children) / 60
        info = dict(
            commit=commit,
            dirty=dirty,
            command=f"python scripts/mutation.py --packages {' '.join(args.packages)}",
            machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            minutes=minutes,
            load=" ".join(f"{x:.1f}" for x in os.getloadavg()),
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )
        run_info.write_text(json.dumps(info))
    info = json.loads(run_info.read_text())
    score = write_report(args.report, workdir, modules, info)
    print(f"score {score:.1%}; report written to {args.report}")


if __name__ == "__main__":
    main()
