"""Batch evaluation of whole extracts: local process pool, or Apache Spark for clusters.

Both engines call the package's own evaluation (`evaluate.new_grouper` + `evaluate.assess_all`)
on the resources of one patient at a time, and write the same rows (`rows.py`).
"""

from .options import BatchOptions, BatchSummary
from .run import run_batch

__all__ = ["BatchOptions", "BatchSummary", "run_batch"]
