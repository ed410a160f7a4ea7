"""Batch benchmark, on generated Bulk Data NDJSON populations.

    python bench/batch_bench.py --sizes 2000 20000 --out bench

1. Against a columnar query: on a `--jitter` export of `--compare-size` patients (plain NDJSON,
   as `bench/population.py` writes it), `fasciculation-cds batch --workers 2` and the polars
   query of `bench/polars_query.py` (latest Mg/Ca/K/Na per patient, low flagged) run in turn,
   A B A B ..., each as a whole process; the ratio of their throughputs is taken pair by pair
   (aim: batch at least 0.5x the query).
2. Scaling and memory: the local engine with 1 and 2 workers, and Spark local[2], on gzipped
   exports of each of `--sizes` patients.

Writes bench/batch.json, bench/batch.md and the "Batch" section of bench/results.md. Each run is
its own process; peak RSS is the largest of that process and its children (workers, JVM). The
load of the machine while it ran is recorded: on a shared machine, quote the ratios.

3. `--scale N` (instead of 1 and 2): gzipped exports of N/5 and N patients holding only the
   resource types the rules read (`population.py --types read`), on the local engine with 2
   workers and on Spark local[2]. Reports throughput, time by stage, and the peak RSS of the
   driver and of each worker process (local workers; Spark's JVM and Python workers), sampled
   from /proc while the run goes on. Writes bench/scale.json, bench/scale.md and the "Scale"
   section of bench/results.md; docs/spark.md sizes clusters from them.

    python bench/batch_bench.py --scale 100000 --out bench
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MAKE_POPULATION = HERE / "population.py"
SECTION = "## Batch"
SCALE_SECTION = "## Scale"


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


def measure(engine: str, workers: int, source: Path, out: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", engine, str(workers),
                           str(source), str(out)], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _status(pid: int) -> tuple[int, int] | None:
    """(parent pid, peak RSS in kB: VmHWM) of a live process."""
    try:
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    except OSError:
        return None
    return int(fields["PPid"]), int(fields.get("VmHWM", "0 kB").split()[0])


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    if name == "java":
        return "jvm"
    if not name.startswith("python"):
        return "other"  # a launcher script
    return "spark python worker" if "pyspark" in command else "worker"


class PeakSampler(threading.Thread):
    """The peak RSS (VmHWM) of a process and of each of its descendants, from /proc."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peaks: dict[int, tuple[str, int]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            statuses = {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    found = _status(int(entry.name))
                    if found:
                        statuses[int(entry.name)] = found
            family, grew = {self.root}, True
            while grew:
                more = {pid for pid, (ppid, _) in statuses.items() if ppid in family} - family
                family |= more
                grew = bool(more)
            for pid in family & statuses.keys():
                role, peak = self.peaks.get(pid, ("other", 0))
                if role == "other":  # a launcher script may exec the JVM in the same process
                    role = _role(pid, self.root)
                self.peaks[pid] = (role, max(peak, statuses[pid][1]))
            self.done.wait(self.every)

    def by_role(self) -> dict[str, list[float]]:
        roles: dict[str, list[float]] = {}
        for role, peak in self.peaks.values():
            if role != "other":
                roles.setdefault(role, []).append(round(peak / 1024, 1))
        return {role: sorted(peaks, reverse=True) for role, peaks in sorted(roles.items())}


def measure_sampled(engine: str, workers: int, source: Path, out: Path) -> dict[str, Any]:
    child_process = subprocess.Popen([sys.executable, __file__, "--child", engine, str(workers),
                                      str(source), str(out)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
    sampler = PeakSampler(child_process.pid)
    sampler.start()
    printed, _ = child_process.communicate()
    sampler.done.set()
    sampler.join()
    if child_process.returncode:
        raise subprocess.CalledProcessError(child_process.returncode, "batch child")
    result: dict[str, Any] = json.loads(printed.strip().splitlines()[-1])
    result["peak_rss_mb_by_process"] = sampler.by_role()
    return result


def make_population(size: int, folder: Path) -> float:
    """A gzipped export of the types the rules read; its size in MB."""
    subprocess.run([sys.executable, str(MAKE_POPULATION), "--patients", str(size), "--out",
                    str(folder), "--format", "ndjson", "--gzip", "--types", "read"],
                   check=True, capture_output=True)
    return sum(p.stat().st_size for p in folder.iterdir()) / 1e6


def scale_runs(size: int, tmp: Path, spark: bool) -> list[dict[str, Any]]:
    runs = []
    for points in (size // 5, size):
        population = tmp / f"scale-{points}"
        export_mb = make_population(points, population)
        for engine in ("local", "spark") if spark else ("local",):
            row = measure_sampled(engine, 2, population, tmp / f"scale-out-{points}-{engine}")
            row.update(size=points, export_mb=round(export_mb, 1),
                       load_before=os.getloadavg()[0])
            runs.append(row)
            print(json.dumps(row), flush=True)
        shutil.rmtree(population, ignore_errors=True)
    return runs


def scale_report(runs: list[dict[str, Any]]) -> list[str]:
    lines = [SCALE_SECTION, "",
             "Generated gzipped Bulk Data NDJSON of the types the rules read "
             "(`population.py --types read`), `--assume-presentation`, `--as-of 2020-01-01`, "
             "2 workers; peak RSS sampled per process from /proc (VmHWM).", "",
             "| patients | engine | export (MB) | patients/s | seconds | time by stage (s) | "
             "driver peak RSS (MB) | worker peak RSS (MB) |",
             "| ---: | --- | ---: | ---: | ---: | --- | ---: | --- |"]
    for row in runs:
        roles = row["peak_rss_mb_by_process"]
        workers = "; ".join(f"{role}: {', '.join(f'{p:.0f}' for p in peaks)}"
                            for role, peaks in roles.items() if role != "driver")
        stages = ", ".join(f"{k} {v:.1f}" for k, v in row["stages"].items() if k != "total")
        lines.append(f"| {row['size']:,} | {row['engine']} | {row['export_mb']} | "
                     f"{row['patients_per_s']:,.1f} | {row['seconds']:.1f} | {stages} | "
                     f"{roles.get('driver', [0])[0]:.0f} | {workers} |")
    by = {(r["size"], r["engine"]): r for r in runs}
    sizes = sorted({r["size"] for r in runs})
    lines.append("")
    if len(sizes) == 2:
        small, large = sizes
        for engine in ("local", "spark"):
            a, b = by.get((small, engine)), by.get((large, engine))
            if not (a and b):
                continue
            peak = max(max(p) for p in b["peak_rss_mb_by_process"].values()) / \
                max(max(p) for p in a["peak_rss_mb_by_process"].values())
            lines.append(f"- {engine}: the largest process's peak RSS at {large:,} patients is "
                         f"{peak:.2f}x that at {small:,} (aim ≤ 1.2x); throughput at "
                         f"{large:,} is {b['patients_per_s'] / a['patients_per_s']:.0%} of that "
                         f"at {small:,} (linear: 100%; aim ≥ 90%).")
        local, spark = by.get((large, "local")), by.get((large, "spark"))
        if local and spark:
            lines.append(f"- {large:,} patients: Spark local[2] at "
                         f"{spark['patients_per_s'] / local['patients_per_s']:.0%} of the "
                         "local engine (aim ≥ 80%).")
    return lines


def _timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


def compare_with_polars(size: int, tmp: Path, rounds: int) -> dict[str, Any]:
    population = tmp / f"jitter-{size}"
    subprocess.run([sys.executable, str(MAKE_POPULATION), "--patients", str(size), "--jitter",
                    "--out", str(population)], check=True, capture_output=True)
    cli = str(Path(sys.executable).parent / "fasciculation-cds")
    batch = [cli, "batch", str(population), "--out", str(tmp / "compare-out"), "--as-of",
             "2026-11-26", "--assume-presentation", "--workers", "2"]
    sys.path.insert(0, str(HERE))
    from polars_query import targets

    query = [sys.executable, str(HERE / "polars_query.py"), str(population),
             json.dumps(targets())]
    _timed(query)  # warm-up: the page cache holds the export for both
    pairs = []
    for _ in range(rounds):
        load = os.getloadavg()[0]
        batch_s, _ = _timed(batch)
        query_s, printed = _timed(query)
        pairs.append({"batch_seconds": batch_s, "polars_seconds": query_s,
                      "polars_query_seconds": json.loads(printed)["seconds"],
                      "ratio": query_s / batch_s, "load_before": load})
    size_mb = sum(p.stat().st_size for p in population.iterdir()) / 1e6
    return {"patients": size, "export_mb": round(size_mb), "pairs": pairs,
            "ratio_median": statistics.median(p["ratio"] for p in pairs),
            "batch_patients_per_s": size / statistics.median(p["batch_seconds"] for p in pairs),
            "polars_patients_per_s": size / statistics.median(p["polars_seconds"]
                                                               for p in pairs)}


def report(runs: list[dict[str, Any]], compared: dict[str, Any] | None,
           sizes: list[int]) -> list[str]:
    lines = [SECTION, ""]
    if compared:
        lines += [f"### Against a polars query ({compared['patients']:,} patients, "
                  f"`--jitter`, {compared['export_mb']} MB NDJSON)", "",
                  "`fasciculation-cds batch --workers 2 --assume-presentation` with the whole "
                  "rule set, and `bench/polars_query.py` (latest Mg/Ca/K/Na per patient, low "
                  "flagged), in turn on the same files, each timed as a whole process.", "",
                  "| round | batch (s) | polars (s) | batch/polars throughput | load |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for index, pair in enumerate(compared["pairs"], start=1):
            lines.append(f"| {index} | {pair['batch_seconds']:.2f} | "
                         f"{pair['polars_seconds']:.2f} | {pair['ratio']:.2f}x | "
                         f"{pair['load_before']:.1f} |")
        lines += ["", f"- Median: batch at **{compared['ratio_median']:.2f}x** the polars "
                  f"query's throughput (aim ≥ 0.5x): {compared['batch_patients_per_s']:,.0f} "
                  f"vs {compared['polars_patients_per_s']:,.0f} patients/s.", ""]
    lines += ["### Scaling and memory", "",
              "Generated Bulk Data NDJSON (gzip), `--assume-presentation`, "
              "`--as-of 2020-01-01`; peak RSS includes worker processes and the JVM.", "",
              "| patients | engine | workers | patients/s | seconds | peak RSS (MB) |",
              "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for row in runs:
        lines.append(f"| {row['size']:,} | {row['engine']} | {row['workers']} | "
                     f"{row['patients_per_s']:,.1f} | {row['seconds']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} |")
    by = {(r["size"], r["engine"], r["workers"]): r for r in runs}
    lines.append("")
    for size in sizes:
        one, two = by.get((size, "local", 1)), by.get((size, "local", 2))
        if one and two:
            lines.append(f"- {size:,} patients: scaling 1 → 2 workers "
                         f"{float(two['patients_per_s']) / float(one['patients_per_s']):.2f}x "
                         "(aim ≥ 1.7x).")
        spark = by.get((size, "spark", 2))
        if spark and two:
            lines.append(f"- {size:,} patients: Spark local[2] at "
                         f"{float(spark['patients_per_s']) / float(two['patients_per_s']):.0%} "
                         "of the local engine with 2 workers (aim ≥ 50%).")
        if two:
            stages = two["stages"]
            total = sum(v for k, v in stages.items() if k != "total") or 1.0
            lines.append(f"- {size:,} patients, local 2 workers, time by stage: " + ", ".join(
                f"{k} {v / total:.0%}" for k, v in stages.items() if k != "total") + ".")
    ordered = sorted(sizes) or [0]
    small, large = by.get((ordered[0], "local", 2)), by.get((ordered[-1], "local", 2))
    if small and large and small is not large:
        lines.append(f"- Memory: peak RSS {float(large['peak_rss_mb']):.0f} MB at "
                     f"{ordered[-1]:,} vs {float(small['peak_rss_mb']):.0f} MB at "
                     f"{ordered[0]:,} patients (aim ≤ 1.5x).")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 20000])
    parser.add_argument("--compare-size", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--scale", type=int, default=None,
                        help="run the scale measurement at N/5 and N patients instead")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, workers, source, out = args.child
        child(engine, int(workers), source, out)
        return
    if args.scale:
        with tempfile.TemporaryDirectory() as tmp:
            scaled = scale_runs(args.scale, Path(tmp), spark=not args.no_spark)
        write_section(args.out, "scale", scaled, scale_report(scaled), SCALE_SECTION)
        return
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        compared = compare_with_polars(args.compare_size, Path(tmp), args.rounds) \
            if args.compare_size else None
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
    (args.out / "batch.json").write_text(json.dumps(
        {"compare_with_polars": compared, "runs": runs,
         "cpus": os.cpu_count()}, indent=2) + "\n")
    lines = report(runs, compared, args.sizes)
    (args.out / "batch.md").write_text("\n".join(lines) + "\n")
    results = args.out / "results.md"
    text = results.read_text() if results.exists() else ""
    # the Scale section (bench/scale.md) is kept, after this one
    scale = SCALE_SECTION + text.split(SCALE_SECTION, 1)[1] if SCALE_SECTION in text else ""
    text = text.split(SECTION)[0].split(SCALE_SECTION)[0].rstrip()
    results.write_text((text + "\n\n" if text else "") + "\n".join(lines) + "\n" +
                       (f"\n{scale.rstrip()}\n" if scale else ""))
    print("\n".join(lines))


def write_section(out: Path, name: str, runs: list[dict[str, Any]], lines: list[str],
                  section: str) -> None:
    """bench/<name>.json and .md, and its section at the end of bench/results.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"runs": runs, "cpus": os.cpu_count()},
                                                 indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    results = out / "results.md"
    text = results.read_text() if results.exists() else ""
    text = text.split(section)[0].rstrip()
    results.write_text((text + "\n\n" if text else "") + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
