"""Read every record of the local data files once, before training starts: a bad record is found
now (named ``file:line``), not hours into a run.

``data.on_bad_record``: ``error`` stops with the first bad record (and how many there are);
``skip`` counts them, reports the count and the first few, and the stream leaves them out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lightning_ttt.data.corpus import TOKENS, BadRecord, scan_file

ON_BAD_RECORD = ("error", "skip")
_SHOWN = 3  # bad records named in a skip report


@dataclass
class ScanReport:
    """What a scan found: records read, bad records (their count and the first few) per file."""

    files: int = 0
    records: int = 0
    bad: int = 0
    bad_files: dict[str, int] = field(default_factory=dict)  # file name -> bad records in it
    first_bad: list[BadRecord] = field(default_factory=list)

    def summary(self) -> str:
        shown = "; ".join(str(b) for b in self.first_bad)
        more = f" (first: {shown})" if shown else ""
        return (f"{self.bad} bad record{'s' if self.bad != 1 else ''} in {len(self.bad_files)} of {self.files} "
                f"files skipped (data.on_bad_record=skip), {self.records} used{more}")


def check_on_bad_record(value: str) -> None:
    if value not in ON_BAD_RECORD:
        raise ValueError(f"data.on_bad_record={value!r} is unknown; expected one of {', '.join(ON_BAD_RECORD)}")


def scan_files(paths: list[str], names: list[str], kinds: list[str], text_field: str, invalid_utf8: str,
               on_bad_record: str = "error", utf8_text: bool = False, progress: bool | None = None) -> ScanReport:
    """Read every record of every file (prepared token shards excepted: ``ttt prepare`` checked them).

    ``on_bad_record="error"`` raises a one-line ``ValueError`` naming the first bad record's ``file:line``
    and the number of bad records in that file; ``"skip"`` returns them counted. A file without one
    usable record (a ``.txt`` file is one record) is an error in both modes. ``progress``: a progress bar over the bytes read (None: on a
    terminal only).
    """
    from tqdm.auto import tqdm

    check_on_bad_record(on_bad_record)
    todo = [(p, n, k) for p, n, k in zip(paths, names, kinds, strict=True)
            if k != TOKENS and (k != "txt" or utf8_text)]
    report = ScanReport(files=len(todo))
    total = sum(os.path.getsize(p) for p, _, _ in todo)
    with tqdm(total=total, unit="B", unit_scale=True, desc="checking data files", disable=None if progress is None else not progress,
              leave=False, dynamic_ncols=True) as bar:
        for path, name, kind in todo:
            _scan_one(path, name, kind, text_field, invalid_utf8, on_bad_record, utf8_text, report)
            bar.update(os.path.getsize(path))
    return report


def _scan_one(path: str, name: str, kind: str, text_field: str, invalid_utf8: str, on_bad_record: str,
              utf8_text: bool, report: ScanReport) -> None:
    good = bad = 0
    first: BadRecord | None = None
    for record in scan_file(path, name, kind, text_field, invalid_utf8, utf8_text):
        if not isinstance(record, BadRecord):
            good += 1
            continue
        bad += 1
        first = first or record
        if len(report.first_bad) < _SHOWN:
            report.first_bad.append(record)
    if bad and on_bad_record == "error":
        also = f"; {bad - 1} more bad record{'s' if bad > 2 else ''} in this file" if bad > 1 else ""
        raise ValueError(f"{first}{also} (set data.on_bad_record=skip to leave bad records out)")
    if good == 0 and kind != "txt":  # every record bad: the wrong data.text_field or not this format at all
        found = f"all {bad} bad, the first {first}" if bad else "it holds none"
        raise ValueError(f"{name}: no usable record ({found}); fix or remove the file")
    report.records += good
    report.bad += bad
    if bad:
        report.bad_files[name] = bad
