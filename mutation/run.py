"""`make mutation`: mutmut over tlq's core, each mutant judged by the fast in-process tests that cover it.

mutmut (configured in pyproject.toml's ``[tool.mutmut]``) copies ``tlq/`` and ``tests/`` into ``mutants/``, runs
the selected tests once to learn which tests call which function, then runs, for every mutant of a function in
``SCOPE``, only the tests that call that function, two mutants at a time. This script starts it afresh, keeps its
output in ``mutants/mutmut.log``, and prints what survived.

The score: a mutant is killed when its tests fail (or time out, or crash); a surviving mutant listed in
``mutation/equivalent.md`` (with the reason it cannot or need not be told apart) counts neither way, because it
is removed from the total; every other survivor counts against the score. The last line printed is
``mutation score: NN% (killed K of N)``, NN rounded down.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENT = REPO / "mutation" / "equivalent.md"
LOG = REPO / "mutants" / "mutmut.log"

# The functions mutated, as mutmut names them (module, then ``x_function`` or ``xǁClassǁmethod``). Each file
# here is also listed in ``only_mutate`` in pyproject.toml; functions with a decorator other than
# staticmethod/classmethod (``@contextlib.contextmanager``, ``@torch.inference_mode()``, ``@functools.cache``)
# are never mutated by mutmut.
SCOPE = [
    # job state changes and recovery
    "tlq.db.claims.*",
    "tlq.db.scans.*",
    "tlq.db.sends.*",
    "tlq.workers.recovery.xǁDatabaseHealthǁ*",
    "tlq.workers.recovery.x_overdue_reason*",
    # the feature cache key: what a weights file's version and digest are, and how the key is made
    "tlq.ml.feature_cache.x_file_digest*",
    "tlq.ml.feature_cache.x_file_version*",
    "tlq.ml.feature_cache.xǁFeatureCacheǁweights_digest*",
    "tlq.ml.feature_cache.xǁFeatureCacheǁmodel_key*",
    "tlq.ml.features.x_describe_transform*",
    # precision selection
    "tlq.ml.precision.*",
    # attacks
    "tlq.ml.attacks.*",
    # the training loops
    "tlq.ml.training.*",
    # the filter compiler (`tlq results --where/--order-by`)
    "tlq.db.filters.*",
    "tlq.db.filter_parser.*",
    # the artifact store: writing inside a job's folder, and copying out (`tlq artifacts --copy-to`)
    "tlq.plugins.artifacts.*",
    "tlq.client.xǁClientǁcopy_artifacts*",
    "tlq.client.x__check_free*",
    "tlq.client.xǁ_NewFilesǁ*",
]

KILLED = {"killed", "timeout", "segfault"}


@dataclass(frozen=True)
class Listed:
    """One entry of equivalent.md: a mutation of ``function`` that turns ``removed`` into ``added``."""

    function: str
    removed: str
    added: str
    reason: str


def read_equivalents(path: Path = EQUIVALENT) -> list[Listed]:
    """The entries of equivalent.md: under a ``## tlq.module.x_function`` heading, bullets of the form
    ``- `old line` → `new line`: reason`` (the reason may go on over indented lines)."""
    entries: list[Listed] = []
    function, continued = None, False
    bullet = re.compile(r"^- `(?P<removed>[^`]*)` → `(?P<added>[^`]*)`:?\s*(?P<reason>.*)$")
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        if line.startswith("## "):
            heading = line[3:].strip().strip("`")
            function, continued = (heading if heading.startswith("tlq.") else None), False
        elif function and (match := bullet.match(line)):
            entries.append(Listed(function, match["removed"].strip(), match["added"].strip(), match["reason"]))
            continued = True
        elif continued and line.startswith("  ") and line.strip():
            last = entries[-1]
            entries[-1] = Listed(last.function, last.removed, last.added, f"{last.reason} {line.strip()}")
        else:
            continued = False
    return entries


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a mutant's diff, each stripped and joined with `` ⏎ ``."""
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return " ⏎ ".join(removed), " ⏎ ".join(added)


def function_of(mutant: str) -> str:
    return mutant.rsplit("__mutmut_", 1)[0]


def run_mutmut(max_children: int, patterns: list[str], keep: bool) -> int:
    """Runs mutmut (afresh unless ``keep``); its output goes to mutants/mutmut.log, with a progress line here
    every minute."""
    if not keep:
        shutil.rmtree(REPO / "mutants", ignore_errors=True)
    (REPO / "mutants").mkdir(exist_ok=True)
    # One thread per test process: two of them share the two cores.
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    command = [mutmut, "run", "--max-children", str(max_children), *patterns]
    start = last_report = time.monotonic()
    progress = re.compile(r"(\d+/\d+\s+🎉 \d+.*?🙁 \d+)")
    latest = ""
    with open(LOG, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            log.write(chunk)
            found = progress.findall(chunk.decode("utf-8", "replace"))
            latest = found[-1] if found else latest
            if time.monotonic() - last_report >= 60:
                last_report = time.monotonic()
                print(
                    f"  {(last_report - start) / 60:4.1f} min  {latest or 'preparing (copying, stats run)'}", flush=True
                )
        code = process.wait()
    print(f"mutmut finished in {(time.monotonic() - start) / 60:.1f} min (exit {code}); its output: {LOG}")
    return code


def summarize(scope: list[str]) -> tuple[int, int]:
    """Prints the survivors and a table per module; returns (killed, total counted)."""
    os.chdir(REPO)
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    equivalents = read_equivalents()
    listed_functions = {entry.function for entry in equivalents}
    used: set[Listed] = set()
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    unlisted: list[tuple[str, str, str, str]] = []
    killed_listed: list[tuple[str, Listed]] = []
    for path in sorted(REPO.joinpath("mutants", "tlq").rglob("*.py.meta")):
        source = path.relative_to(REPO / "mutants").with_suffix("")  # tlq/db/claims.py
        data = SourceFileMutationData(path=source)
        data.load()
        for mutant, code in sorted(data.exit_code_by_key.items()):
            if not any(fnmatch.fnmatch(mutant, pattern) for pattern in scope):
                continue
            module = str(source)
            status = status_by_exit_code[code]
            function = function_of(mutant)
            rows[module]["mutants"] += 1
            if status in KILLED:
                rows[module]["killed"] += 1
                if function in listed_functions:  # an entry for a mutant that is killed now is out of date
                    removed, added = changed_lines(get_diff_for_mutant(mutant, path=source))
                    for entry in equivalents:
                        if (entry.function, entry.removed, entry.added) == (function, removed, added):
                            killed_listed.append((mutant, entry))
                            used.add(entry)
                continue
            removed, added = changed_lines(get_diff_for_mutant(mutant, path=source))
            match = next(
                (e for e in equivalents if (e.function, e.removed, e.added) == (function, removed, added)), None
            )
            if match is not None and status == "survived":
                used.add(match)
                rows[module]["listed"] += 1
            else:
                rows[module]["survived" if status == "survived" else "other"] += 1
                unlisted.append((mutant, status, removed, added))
    if unlisted:
        print(f"\n{len(unlisted)} mutants not killed and not listed in {EQUIVALENT.relative_to(REPO)}:")
        for mutant, status, removed, added in unlisted:
            print(f"  {mutant} ({status}; `mutmut show {mutant}`)\n      - {removed}\n      + {added}")
    stale = [e for e in equivalents if e not in used]
    if killed_listed or stale:
        print(f"\nEntries of {EQUIVALENT.relative_to(REPO)} to remove (the mutant is killed now, or is gone):")
        for mutant, entry in killed_listed:
            print(f"  killed: {mutant}: `{entry.removed}` → `{entry.added}`")
        for entry in stale:
            if all(entry is not e for _, e in killed_listed):
                print(f"  no such survivor: {entry.function}: `{entry.removed}` → `{entry.added}`")
    print(f"\n{'module':34} {'mutants':>8} {'killed':>7} {'listed':>7} {'survived':>9} {'other':>6}")
    total = collections.Counter()
    for module, row in sorted(rows.items()):
        total.update(row)
        print(
            f"{module:34} {row['mutants']:8} {row['killed']:7} {row['listed']:7} {row['survived']:9} {row['other']:6}"
        )
    print(
        f"{'all':34} {total['mutants']:8} {total['killed']:7} {total['listed']:7} {total['survived']:9} "
        f"{total['other']:6}"
    )
    print("(listed: survivors equivalent.md gives a reason for, left out of the score; other: no covering test, or")
    print(" suspicious)")
    return total["killed"], total["mutants"] - total["listed"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--report-only", action="store_true", help="summarize the last run in mutants/ again")
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ (mutmut's test map) from the last run")
    parser.add_argument(
        "patterns", nargs="*", help="only these mutants (mutmut names, * allowed), to work on one module; default: all"
    )
    args = parser.parse_args()
    scope = args.patterns or SCOPE
    if not args.report_only:
        code = run_mutmut(args.max_children, scope, args.keep)
        if code != 0:
            print(f"mutmut failed (exit {code}); the end of {LOG}:")
            print("\n".join(LOG.read_text(errors="replace").splitlines()[-30:]))
            return code
    killed, counted = summarize(scope)
    if counted == 0:
        print("no mutants in scope: nothing was measured")
        return 1
    print(f"mutation score: {math.floor(100 * killed / counted)}% (killed {killed} of {counted})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
