"""The names of the metrics more than one stage reads (the trainer writes them, the sweep, report and export select and
report by them)."""

__all__ = ["SELECTION_METRIC", "TEST_MAP"]

SELECTION_METRIC = "val/best_mAP"
"""What a sweep, the report and the export choose a trial by, unless told otherwise: the best validation mAP."""
TEST_MAP = "test/mAP"
"""The reported (never chosen on) accuracy: mAP of the test queries against the database."""
