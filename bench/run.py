"""`make bench`: tlq against plain baselines measured in the same run, as a Markdown table.

    python bench/run.py                     # every row, on the CPU
    python bench/run.py --rows 1,5          # some rows
    python bench/run.py --device cuda       # the same rows on a GPU (bench/gpu.sh)

The table is printed and saved, with the machine's description, as bench/results/<date>.md (and .json).
Performance is reported as ratios against baselines measured in this run, never asserted in tests.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # the test helpers (tests/support.py): real data, workers, databases

import lr_rows  # noqa: E402
import rows as bench  # noqa: E402

SIZES = {
    "cpu": {"extract": {"resnet18": 128, "resnet50": 128, "vgg16": 96}, "probe_per_class": 100, "full_per_class": 50},
    "cuda": {"extract": {"resnet18": 512, "resnet50": 512, "vgg16": 256}, "probe_per_class": 60, "full_per_class": 60},
}


def reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def fresh_pg_database(name: str) -> str:
    from tests.support import create_postgres_database

    return create_postgres_database(name)


def table(rows: list[bench.Row]) -> str:
    lines = [
        "| # | benchmark | tlq | baseline | unit | tlq vs baseline | target | met | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, row in enumerate(rows, 1):
        met = {True: "yes", False: "no", None: "-"}[row.met]
        lines.append(
            f"| {i} | {row.name} | {row.tlq:.4g} | {row.baseline:.4g} | {row.unit} | {row.ratio:.2f}x | "
            f"{row.target} | {met} | {row.note} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--rows", default="1,2,3,4,5,6,7,8", help="Which rows to run (1-9; 9, --ddp 2 scaling, is not a default)."
    )
    parser.add_argument("--work", default=str(HERE / "work"), help="Scratch folder for images and homes.")
    parser.add_argument("--out", default=str(HERE / "results"), help="Where the table is saved.")
    args = parser.parse_args()
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    chosen = {int(r) for r in args.rows.split(",")}
    sizes = SIZES[args.device]
    results: list[bench.Row] = []
    started = time.perf_counter()

    def run(label: str, fn):
        t = time.perf_counter()
        print(f"running {label} ...", flush=True)
        out = fn()
        results.extend(out if isinstance(out, list) else [out])
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)

    if 1 in chosen:
        run("1 feature-extract", lambda: bench.feature_extract_rows(work, args.device, sizes["extract"]))
    if 3 in chosen or 2 in chosen:  # row 3 trains the backbone row 2 probes
        run("3 full finetune", lambda: bench.full_finetune_row(work, args.device, sizes["full_per_class"]))
    if 2 in chosen:
        run("2 linear probe", lambda: bench.linear_probe_row(work, args.device, sizes["probe_per_class"]))
    if 4 in chosen:
        run("4 queue, embedded", lambda: bench.queue_rows(work, "embedded", None, None))
        if reachable(6379) and reachable(5432):
            run(
                "4 queue, redis",
                lambda: bench.queue_rows(work, "redis", "redis://127.0.0.1:6379/14", fresh_pg_database("tlq_bench")),
            )
        else:
            print("  Redis or PostgreSQL is not reachable on 127.0.0.1; the Redis queue row is left out")
        run("4 warm worker", lambda: bench.warm_worker_row(work))
    if 5 in chosen:
        run("5 PGD", lambda: bench.pgd_row(work, args.device))
    if 6 in chosen and args.device == "cpu":
        run("6 streaming features", lambda: bench.streaming_row(work))
    if 7 in chosen and args.device == "cpu":
        run("7 database at scale, SQLite", lambda: bench.database_scale_rows(work, "sqlite", None))
        if reachable(5432):
            run(
                "7 database at scale, PostgreSQL",
                lambda: bench.database_scale_rows(work, "postgresql", fresh_pg_database("tlq_bench_scale")),
            )

    if 8 in chosen:
        run("8 --lr auto against a hand grid", lambda: lr_rows.lr_auto_row(work, args.device))
    if 9 in chosen:
        run("9 --ddp 2 scaling", lambda: bench.ddp_scaling_row(work, args.device, sizes["full_per_class"]))

    info = bench.machine_info(args.device)
    report = "\n".join(
        [
            f"# tlq benchmarks, {info['date']}",
            "",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if k != "date"),
            "",
            table(results),
            "",
            f"Total time {time.perf_counter() - started:.0f} s. Command: `python bench/run.py --device {args.device} "
            f"--rows {args.rows}`.",
        ]
    )
    print("\n" + report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y-%m-%d", time.gmtime()) + ("" if args.device == "cpu" else f"-{args.device}")
    (out / f"{stem}.md").write_text(report + "\n")
    (out / f"{stem}.json").write_text(bench.to_json(results) + "\n")
    print(f"\nsaved {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
