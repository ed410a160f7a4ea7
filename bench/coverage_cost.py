"""What counting the codings the rules did not understand costs a batch run (docs/coverage.md).

    python bench/coverage_cost.py EXPORT_FOLDER [--as-of DATE] [--rounds N]

After a warm-up of each, runs the two phases of a local batch run that the counting touches, in
this one process and one core, with the counting off and on in turn (A B A B ...): partitioning
every input file (where the resources no rule can use are counted) and evaluating every shard
(where the kept ones are).
Times are the process's CPU seconds (on a shared machine, wall time mostly measures the
neighbours). Prints each phase's median seconds both ways and the cost of counting in percent
of the two phases together (the merge, which it does not touch, is left out: the true share is
smaller). On a busy machine the pairs differ by more than the counting costs, so it then
replays the counting alone: every resource the partitioner did not keep through the tally (as
the router feeds it, file by file), and every evaluated shard's records through the per-record
count, each loop timed as a whole. That CPU time, against the phases without counting, is the
figure to quote.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from fasciculation_cds.assessment import Assessment
from fasciculation_cds.batch import partition, worker
from fasciculation_cds.batch.keys import UNOWNED, patient_key
from fasciculation_cds.batch.options import Settings
from fasciculation_cds.batch.partition import PartitionTask, partition_file, read_records
from fasciculation_cds.batch.unrecognized import PartitionTally, Tally, accountant_for
from fasciculation_cds.evaluate import assess_all, evaluator_for, fix_as_of, new_grouper
from fasciculation_cds.ruleset import load_rules
from fasciculation_cds.sources import RawResource, expand_paths


def _phases(files: list[Path], settings: Settings, shards: int, counting: bool,
            work: Path) -> tuple[float, float]:
    shutil.rmtree(work, ignore_errors=True)
    # the partitioner makes its tally from this name: off, it makes none
    replacement: object = PartitionTally if counting else (lambda settings: None)
    vars(partition)["PartitionTally"] = replacement
    started = time.process_time()
    for task, path in enumerate(files):
        partition_file(PartitionTask(str(path), str(work), task, shards, settings))
    partitioned = time.process_time() - started
    ruleset = load_rules(settings.rules_dir)
    started = time.process_time()
    medications = [r for r in read_records(partition.medication_files(work))
                   if isinstance(r, RawResource)]
    for shard in range(shards):
        tally = Tally() if counting else None
        worker.evaluate_group(read_records(partition.shard_files(work, shard)), medications,
                              ruleset, settings, tally)
        if tally is not None:
            tally.write(work / f"tally-{shard}.ndjson")
    return partitioned, time.process_time() - started


def _counting_alone(files: list[Path], settings: Settings, shards: int,
                    work: Path) -> float:
    """CPU seconds of the counting code alone, fed what a run feeds it."""
    spent = 0.0
    relevance = partition.Relevance(settings)
    for path in files:  # one file at a time, as a partition task holds it
        fed: list[tuple[str, dict[str, Any], bytes | None]] = []
        with gzip.open(path) if path.name.endswith(".gz") else path.open("rb") as handle:
            for line in handle:
                resource = orjson.loads(line)
                key = patient_key(resource, None, {})
                kept, found = relevance.decide(resource)
                if not kept and key != UNOWNED:
                    fed.append((key, resource, found))
        started = time.process_time()
        tally = PartitionTally(settings)
        summaries: dict[str, dict[bytes, int]] = {}
        for key, resource, found in fed:
            elements = summaries.get(key)
            if elements is None:
                elements = summaries[key] = {}
            tally.note(elements, resource, found)
        for key, elements in summaries.items():
            tally.add(key, elements)
        tally.write(work / "tally.ndjson")
        spent += time.process_time() - started
    ruleset = load_rules(settings.rules_dir)
    _phases(files, settings, shards, False, work / "run")
    medications = [r for r in read_records(partition.medication_files(work / "run"))
                   if isinstance(r, RawResource)]
    for shard in range(shards):
        grouper = new_grouper(ruleset, settings.as_of, strict=False)
        for raw in medications:
            grouper.add(raw)
        for record in read_records(partition.shard_files(work / "run", shard)):
            if isinstance(record, RawResource):
                grouper.add(record)
            else:
                grouper.note_skipped(record.key, record.count, record.source, record.entry,
                                     record.latest)
        result = grouper.finish()
        assessed = {o.patient.reference: o for o in assess_all(
            result, ruleset, settings.as_of, assume_presentation=False)
            if isinstance(o, Assessment)}
        started = time.process_time()
        accountant, counts = accountant_for(ruleset), Tally()
        for patient in result.patients:
            counts.add_coverage(accountant.record_codings(patient,
                                                          assessed.get(patient.reference)))
        counts.write(work / f"tally-{shard}.ndjson")
        spent += time.process_time() - started
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("--as-of", default="2026-12-07")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=8)
    args = parser.parse_args()
    files = expand_paths([args.export])
    settings = Settings(None, fix_as_of(args.as_of), args.as_of, False, False, "parquet")
    evaluator_for(load_rules(None))  # compiled once, outside the timings
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for counting in (False, True):  # warm-up: caches, memos and the page cache
            _phases(files, settings, args.shards, counting, Path(tmp) / "work")
        for _ in range(args.rounds):
            for counting in (False, True):
                times[counting].append(_phases(files, settings, args.shards, counting,
                                               Path(tmp) / "work"))
    off = [p + e for p, e in times[False]]
    on = [p + e for p, e in times[True]]
    for name, index in (("partition", 0), ("evaluate", 1)):
        print(f"{name} (CPU): off {statistics.median(t[index] for t in times[False]):.2f} s, "
              f"on {statistics.median(t[index] for t in times[True]):.2f} s")
    pairs = [b / a - 1 for a, b in zip(off, on, strict=True)]
    print(f"both phases: off {statistics.median(off):.2f} s, on {statistics.median(on):.2f} s;"
          f" difference {100 * statistics.median(pairs):+.1f} % (median of "
          f"{len(pairs)} pairs; min {100 * min(pairs):+.1f} %, max {100 * max(pairs):+.1f} %)")
    with tempfile.TemporaryDirectory() as tmp:
        alone = [_counting_alone(files, settings, args.shards, Path(tmp))
                 for _ in range(args.rounds)]
    spent = statistics.median(alone)
    print(f"the counting alone: {spent:.2f} s CPU (median of {len(alone)}), "
          f"{100 * spent / statistics.median(off):.1f} % of the two phases without it")


if __name__ == "__main__":
    main()
