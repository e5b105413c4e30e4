"""Open a data source with the `datasets` library: a hub dataset name (with subset and split), a local
.json/.jsonl/.csv/.parquet file, a folder of such files, or a ``save_to_disk`` folder.

Every failure is one TuneError naming the recipe field, the value and a fix (a hub dataset that is
not in the local cache while offline says how to get it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunecli.data.rows import Rows, _jsonl_rows, jsonl_problem
from tunecli.errors import TuneError

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
KINDS = "a hub dataset name (org/name), a .json/.jsonl/.csv/.parquet file, or a save_to_disk folder"


class NotHere(TuneError):
    """Data this machine cannot see (a missing local path, a hub dataset offline and not cached): fine
    where the recipe runs elsewhere, a refusal where it runs here."""


class Unreachable(NotHere):
    """A hub dataset that is not in the local cache while the Hub cannot be reached."""


def is_local(spec: str) -> bool:
    """A path rather than a hub name: it exists, looks like a path, or ends like a data file."""
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in FORMATS


def read_rows(spec: str | Path, field: str, *, split: str | None = None, subset: str | None = None,
              limit: int | None = None, make_hint: str = "") -> Rows:
    """The rows of one source as dicts (at most ``limit``); ``split`` applies to hub names and folders."""
    spec = str(spec)
    table = open_table(spec, field, split=split, subset=subset, make_hint=make_hint)
    if isinstance(table, Rows):  # a .jsonl file `datasets` could not type: read line by line
        rows = table
    else:
        if limit is not None and len(table) > limit:
            table = table.select(range(limit))
        rows = Rows(Path(spec).expanduser() if is_local(spec) else spec, field, table.to_list())
    if not rows.rows:
        where = f"its split {split!r}" if split and not Path(spec).expanduser().is_file() else "it"
        raise TuneError(f"{field} = '{spec}': {where} has no rows. Fix: point it at data with rows in it"
                        + (" or choose another split (data.split / data.val_split)." if "split" in where else "."),
                        field=field)
    return rows


def open_table(spec: str, field: str, *, split: str | None, subset: str | None, make_hint: str = "") -> Any:
    """A ``datasets.Dataset`` (or, for a .jsonl file whose columns `datasets` cannot type, its Rows)."""
    path = Path(spec).expanduser()
    if is_local(spec) and not path.exists():
        raise NotHere(f"{field} = '{spec}' does not exist. Fix: point it at {KINDS}{make_hint}.", field=field)
    if path.is_file() and path.suffix.lower() not in FORMATS:
        raise TuneError(f"{field} = '{spec}': {path.suffix or 'a file without a suffix'} is not a data format read here. "
                        f"Fix: use {KINDS} (convert the file).", field=field)
    import datasets

    datasets.disable_progress_bars()  # one line per source in a terminal is noise; errors say what matters
    datasets.logging.set_verbosity_error()
    try:
        if path.is_file():
            return datasets.load_dataset(FORMATS[path.suffix.lower()], data_files=str(path), split="train")
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")):
            return _pick_split(datasets.load_from_disk(str(path)), spec, field, split)
        return datasets.load_dataset(spec if not path.is_dir() else str(path), subset, split=split or "train")
    except TuneError:
        raise
    except Exception as e:  # `datasets` raises many types; each becomes one paragraph
        return _failure(e, spec, path, field, split, subset)


def _pick_split(loaded: Any, spec: str, field: str, split: str | None) -> Any:
    if not hasattr(loaded, "keys"):  # a save_to_disk Dataset: one table, no splits
        return loaded
    name = split or "train"
    if name not in loaded:
        raise _split_error(spec, field, name, list(loaded))
    return loaded[name]


def _split_error(spec: str, field: str, split: str, splits: list[str]) -> TuneError:
    key = "data.split" if field == "data.train_files" else "data.val_split"
    return TuneError(f"{key} = '{split}': {field} '{spec}' has no such split (it has {', '.join(splits)}). "
                     f"Fix: set {key} to one of them.", field=key)


def _failure(e: Exception, spec: str, path: Path, field: str, split: str | None, subset: str | None) -> Any:
    text = " ".join(str(e).split())
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path, field)  # pinpoints a bad line, or reads rows whose types vary
    if path.is_file() and path.suffix.lower() == ".json":
        jsonl_problem(path, field)
    if isinstance(e, ValueError) and "Unknown split" in text:
        splits = text.split("Should be one of", 1)[-1].strip(" .[]").replace("'", "")
        raise _split_error(spec, field, split or "train", [s.strip() for s in splits.split(",")]) from None
    if isinstance(e, ValueError) and "corresponds to no data" in text:
        raise TuneError(f"{field} = '{spec}': its split {split or 'train'!r} has no rows. Fix: point it at data with "
                        "rows in it or choose another split (data.split / data.val_split).", field=field) from None
    if isinstance(e, ValueError) and "Config name is missing" in text:
        configs = text.split("among the available configs:", 1)[-1].split("Example")[0].strip(" .[]").replace("'", "")
        raise TuneError(f"data.subset = None: the hub dataset '{spec}' has several subsets ({configs}). "
                        "Fix: set data.subset to one of them.", field="data.subset") from None
    if isinstance(e, ConnectionError) or "offline" in text.lower() or "couldn't reach" in text.lower():
        raise Unreachable(
            f"{field} = '{spec}': this hub dataset is not in the local Hugging Face cache and the Hub cannot be reached "
            f"from here ({text[:160]}). Fix: on a machine with network run `hf download {spec} --repo-type dataset "
            f"--local-dir DIR` and set {field}=DIR, or load it once there with datasets.load_dataset('{spec}'"
            + (f", '{subset}'" if subset else "") + ") to fill the cache"
            + (" (or use the local files `tune data gsm8k` writes)." if field.startswith("data.") and "gsm8k" in spec.lower() else "."),
            field=field) from None
    if "doesn't exist on the Hub" in text or type(e).__name__ == "DatasetNotFoundError":
        raise TuneError(f"{field} = '{spec}': no such dataset, neither a local path nor on the Hub. Fix: give {KINDS}.",
                        field=field) from None
    raise TuneError(f"{field} = '{spec}' cannot be read ({type(e).__name__}: {text[:300]}). Fix: give {KINDS} "
                    "that `datasets` can open (check the file is complete and in its suffix's format).", field=field) from None
