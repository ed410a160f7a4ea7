"""Batch benchmark: local engine with 1 and 2 workers, and Spark local[2], on the same
generated Bulk Data NDJSON populations (2,000 and 20,000 patients by default).

    python bench/batch_bench.py --sizes 2000 20000 --out bench

Appends a "Batch" section to bench/results.md and writes bench/batch.json. Each run is its own
process; its peak RSS is the largest of that process and its children (workers, JVM).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAKE_POPULATION = HERE.parent.parent / "shared" / "tools" / "make_population.py"
SECTION = "## Batch"


def child(engine: str, workers: int, source: str, out: str) -> None:
    from fasciculation_cds.batch import BatchOptions, run_batch

    started = time.perf_counter()
    summary = run_batch(BatchOptions(inputs=[Path(source)], out=Path(out), engine=engine,
                                     workers=workers, as_of="2020-01-01",
                                     assume_presentation=True))
    seconds = time.perf_counter() - started
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    print(json.dumps({"engine": engine, "workers": workers, "patients": summary.patients,
                      "seconds": seconds, "patients_per_s": summary.patients / seconds,
                      "peak_rss_mb": peak, "stages": summary.seconds}))


def measure(engine: str, workers: int, source: Path, out: Path) -> dict[str, object]:
    done = subprocess.run([sys.executable, __file__, "--child", engine, str(workers),
                           str(source), str(out)], capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, workers, source, out = args.child
        child(engine, int(workers), source, out)
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            population = Path(tmp) / f"pop-{size}"
            subprocess.run([sys.executable, str(MAKE_POPULATION), "--patients", str(size),
                            "--out", str(population), "--format", "ndjson", "--gzip"],
                           check=True, capture_output=True)
            plan = [("local", 1), ("local", 2)] + ([] if args.no_spark else [("spark", 2)])
            for engine, workers in plan:
                row = measure(engine, workers, population, Path(tmp) / f"out-{size}-{engine}-"
                              f"{workers}")
                row["size"] = size
                runs.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps(runs, indent=2) + "\n")
    lines = [SECTION, "", "Generated Bulk Data NDJSON (gzip), `--assume-presentation`, "
             "`--as-of 2020-01-01`; peak RSS includes worker processes and the JVM.", "",
             "| patients | engine | workers | patients/s | seconds | peak RSS (MB) |",
             "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in runs:
        lines.append(f"| {row['size']:,} | {row['engine']} | {row['workers']} | "
                     f"{row['patients_per_s']:,.1f} | {row['seconds']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} |")
    by = {(r["size"], r["engine"], r["workers"]): r for r in runs}
    lines.append("")
    for size in args.sizes:
        one, two = by.get((size, "local", 1)), by.get((size, "local", 2))
        if one and two:
            lines.append(f"- {size:,} patients: scaling 1 → 2 workers "
                         f"{float(two['patients_per_s']) / float(one['patients_per_s']):.2f}× "
                         "(aim ≥ 1.7×).")
        spark = by.get((size, "spark", 2))
        if spark and two:
            lines.append(f"- {size:,} patients: Spark local[2] at "
                         f"{float(spark['patients_per_s']) / float(two['patients_per_s']):.0%} "
                         "of the local engine with 2 workers (aim ≥ 50%).")
        if two:
            stages = two["stages"]
            total = sum(v for k, v in stages.items() if k != "total") or 1.0  # type: ignore[union-attr]
            lines.append(f"- {size:,} patients, local 2 workers, time by stage: " + ", ".join(
                f"{k} {v / total:.0%}" for k, v in stages.items() if k != "total") + ".")  # type: ignore[union-attr]
    sizes = sorted(args.sizes)
    small, large = by.get((sizes[0], "local", 2)), by.get((sizes[-1], "local", 2))
    if small and large and small is not large:
        lines.append(f"- Memory: peak RSS {float(large['peak_rss_mb']):.0f} MB at {sizes[-1]:,} "
                     f"vs {float(small['peak_rss_mb']):.0f} MB at {sizes[0]:,} patients "
                     "(aim ≤ 1.5×).")
    results = args.out / "results.md"
    text = results.read_text() if results.exists() else ""
    text = text.split(SECTION)[0].rstrip() + "\n\n" if text else ""
    results.write_text(text + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
