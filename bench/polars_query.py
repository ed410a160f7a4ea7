"""The comparison query for the batch benchmark: with polars, the latest magnesium, calcium,
potassium and sodium result of each patient in a Bulk Data export, flagged when low.

    python bench/polars_query.py EXPORT_FOLDER [TARGETS_JSON]

The codes and the "low" thresholds come from the loaded rule set (the electrolyte rules'
`latest: true` lab patterns), so the query looks for what the rules look for. It compares the
value as sent with the threshold, without unit conversion: it is a workload to measure against,
not a clinical result. Prints one JSON line: rows, patients, seconds (inside the process).
The benchmark passes the targets as JSON (`targets()` of this file), so that the timed process
does not load the rule set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

CONCEPTS = ("magnesium", "calcium-total", "calcium-ionized", "potassium", "sodium")


def targets() -> dict[str, tuple[str, float]]:
    """LOINC code -> (concept, low threshold), from the rules."""
    from fasciculation_cds import load_rules

    ruleset = load_rules()
    low: dict[str, float] = {}
    for rule in ruleset.active_rules():
        for match in rule.match:
            for pattern in match.facts.values():
                if pattern.fact == "lab" and pattern.latest and pattern.concept in CONCEPTS \
                        and pattern.value is not None and pattern.value.lt is not None:
                    low.setdefault(pattern.concept, pattern.value.lt)
    return {code: (concept, low[concept]) for concept in low
            for _, code in ruleset.terminology.codes_of([concept])}


def main() -> None:
    import polars as pl

    wanted = ({code: (c, t) for code, (c, t) in json.loads(sys.argv[2]).items()}
              if len(sys.argv) > 2 else targets())
    started = time.perf_counter()
    files = sorted(str(p) for p in Path(sys.argv[1]).glob("Observation*.ndjson*"))
    coding = pl.Struct({"system": pl.String, "code": pl.String})
    schema = {"subject": pl.Struct({"reference": pl.String}),
              "code": pl.Struct({"coding": pl.List(coding)}),
              "effectiveDateTime": pl.String,
              "valueQuantity": pl.Struct({"value": pl.Float64})}
    concept = {code: c for code, (c, _) in wanted.items()}
    threshold = {code: t for code, (_, t) in wanted.items()}
    result = (
        pl.scan_ndjson(files, schema=schema)
        .select(pl.col("subject").struct.field("reference").alias("patient"),
                pl.col("code").struct.field("coding").list.first().struct.field("code")
                .alias("code"),
                pl.col("effectiveDateTime").alias("time"),
                pl.col("valueQuantity").struct.field("value").alias("value"))
        .filter(pl.col("code").is_in(list(wanted)))
        .with_columns(pl.col("code").replace_strict(concept).alias("concept"),
                      pl.col("code").replace_strict(threshold, return_dtype=pl.Float64)
                      .alias("low_below"))
        .sort("time")
        .group_by(["patient", "concept"]).last()
        .with_columns((pl.col("value") < pl.col("low_below")).alias("low"))
        .collect())
    print(json.dumps({"rows": result.height, "patients": result["patient"].n_unique(),
                      "low": int(result["low"].sum()),
                      "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
