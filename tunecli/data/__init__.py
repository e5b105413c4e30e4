"""Reading training data with the `datasets` library: hub names, local .json/.jsonl/.csv/.parquet files
and save_to_disk folders, their columns mapped to examples. Below the trainer and authoring, so
`tune new` / `tune validate` and the trainer run the same checks (and no torch is loaded for them)."""
