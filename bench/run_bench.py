"""Throughput and memory of evaluation, next to two baselines measured on the same files.

    python bench/run_bench.py --patients 2000 --out bench

Writes bench/results.json and bench/results.md. Each measurement runs in its own process so that
its peak RSS is its own. Baselines: orjson parse only (the floor for reading JSON in Python) and
fhir.resources validation of every resource.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MAKE_POPULATION = REPO / "bench" / "population.py"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, folder: str) -> dict[str, object]:
    """Runs inside a child process; prints one JSON line."""
    import orjson

    files = sorted(Path(folder).glob("*.json"))
    started = time.perf_counter()
    cpu_started = time.process_time()  # a shared machine: CPU time is what the run itself used
    resources = 0
    stages: dict[str, float] = {}
    patients = 0
    if mode == "orjson":
        for file in files:
            bundle = orjson.loads(file.read_bytes())
            resources += len(bundle.get("entry", []))
            patients += 1
    elif mode == "validate-all":
        from fhir.resources.R4B import get_fhir_model_class

        for file in files:
            bundle = orjson.loads(file.read_bytes())
            for entry in bundle.get("entry", []):
                res = entry["resource"]
                get_fhir_model_class(res["resourceType"]).model_validate(res)
                resources += 1
            patients += 1
    else:
        from fasciculation_cds import load_rules
        from fasciculation_cds.evaluate import evaluator_for, ingest
        from fasciculation_cds.fhir_time import parse_as_of

        ruleset = load_rules()
        evaluator = evaluator_for(ruleset)
        as_of = parse_as_of("2020-01-01")
        strict = mode == "evaluate-strict"
        stages = {"ingest": 0.0, "evaluate": 0.0}
        since = as_of - __import__("datetime").timedelta(days=ruleset.max_lookback_days)
        for file in files:  # streamed: one Bundle (one patient) in memory at a time
            t0 = time.perf_counter()
            result = ingest(file, ruleset, strict=strict, observations_since=since)
            t1 = time.perf_counter()
            for record in result.patients:
                evaluator.assess(record, as_of, assume_presentation=True)
                patients += 1
            stages["ingest"] += t1 - t0
            stages["evaluate"] += time.perf_counter() - t1
            resources += result.counts["resources"]
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    print(json.dumps({"mode": mode, "seconds": elapsed, "cpu_seconds": cpu,
                      "resources_per_cpu_s": resources / cpu, "resources": resources,
                      "patients": patients, "resources_per_s": resources / elapsed,
                      "patients_per_s": patients / elapsed, "peak_rss_mb": _peak_rss_mb(),
                      "stages": stages}))
    return {}


def run_child(mode: str, folder: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(folder)],
                         capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        population = Path(tmp) / "population"
        subprocess.run([sys.executable, str(MAKE_POPULATION), "--patients", str(args.patients),
                        "--out", str(population), "--format", "bundles"], check=True,
                       capture_output=True)
        rows = [run_child(mode, population) for mode in
                ("orjson", "evaluate", "evaluate-strict", "validate-all")]
        half = Path(tmp) / "half"
        subprocess.run([sys.executable, str(MAKE_POPULATION), "--patients",
                        str(max(1, args.patients // 10)), "--out", str(half), "--format",
                        "bundles"], check=True, capture_output=True)
        small = run_child("evaluate", half)
    by_mode = {str(r["mode"]): r for r in rows}
    floor = float(by_mode["orjson"]["resources_per_s"])  # type: ignore[arg-type]
    report = {
        "patients": args.patients, "python": platform.python_version(),
        "machine": platform.machine(), "results": rows,
        "evaluate_vs_orjson": float(by_mode["evaluate"]["resources_per_s"]) / floor,  # type: ignore[arg-type]
        # CPU time: on a shared machine the process's own time, not the others' load
        "evaluate_vs_orjson_cpu": float(by_mode["orjson"]["cpu_seconds"])  # type: ignore[arg-type]
        / float(by_mode["evaluate"]["cpu_seconds"]),  # type: ignore[arg-type]
        "load_average": __import__("os").getloadavg()[0],
        "peak_rss_small_population_mb": small["peak_rss_mb"],
        "small_population": small["patients"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# Benchmark: ingest + normalize + engine", "",
             f"{args.patients} Synthea patients replicated with fresh ids (Bundles), one core, "
             f"Python {report['python']}. Each row is its own process.", "",
             "| mode | resources/s | patients/s | seconds | peak RSS (MB) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['resources_per_s']:,.0f} | "
                     f"{row['patients_per_s']:,.1f} | {row['seconds']:.1f} | "
                     f"{row['peak_rss_mb']:.0f} |")
    stages = by_mode["evaluate"]["stages"]
    total = sum(stages.values()) or 1.0  # type: ignore[union-attr, arg-type]
    lines += ["", f"Evaluation runs at {report['evaluate_vs_orjson']:.0%} of the orjson-only rate "
              f"in wall time, {report['evaluate_vs_orjson_cpu']:.0%} in CPU time (aim: at "
              f"least 33%; load average {report['load_average']:.1f} on "
              f"{__import__('os').cpu_count()} cores at the end).", "",
              "Where the time goes (evaluate): " + ", ".join(
                  f"{k} {v / total:.0%}" for k, v in stages.items()) + ".",  # type: ignore[union-attr]
              "", f"Memory: peak RSS {small['peak_rss_mb']:.0f} MB for {small['patients']} "
              f"patients vs {by_mode['evaluate']['peak_rss_mb']:.0f} MB for {args.patients} "
              "(files are streamed one at a time)."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
