"""The run directory: glan.db (every item and paid-for reply), the dataset beside it
(instructions.jsonl, or a Ray run's Parquet parts), and what curation decided."""
