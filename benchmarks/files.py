"""Files written whole or not at all, and the run files read line by line: generic helpers with no
knowledge of runs, grids or models, so that every layer (accounting, training, harness, reports) can use
them without importing anything above it."""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


class RunFileError(ValueError):
    """A run file that does not parse or does not hold what a run folder must."""


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A private temporary path to write, moved onto ``path`` on success: a reader (or a second grid
    writing the same report) sees the old file or the new one, never a torn one. The temporary name keeps
    the process id, so two writers never share one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (see ``replacing``)."""
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


def write_history(path: Path, records: list[dict]) -> None:
    """``history.jsonl`` holding exactly ``records``, one JSON object a line (what a resumed run starts from)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def append_history(path: Path, record: dict) -> None:
    """One finished epoch's record, appended as its own line: a kill leaves at most a torn last line, which
    ``read_history`` skips."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_history(path: Path, strict: bool = False, limit: int | None = None) -> list[dict]:
    """The per-epoch records of ``history.jsonl`` (the first ``limit`` of them, when given: lines after
    those are not read). A line that does not parse as a JSON object raises ``RunFileError`` when
    ``strict``; otherwise it is skipped with one warning naming the file and line."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        if strict:
            raise RunFileError(f"{path.name} is unreadable ({e})") from None
        log.warning("%s is unreadable (%s); no history shown for this run", path, e)
        return []
    for i, line in enumerate(lines, 1):
        if limit is not None and len(records) == limit:
            break
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            if strict:
                raise RunFileError(f"{path.name}, line {i}, does not parse ({e})") from None
            log.warning("%s, line %d, does not parse (%s); skipped it", path, i, e)
            continue
        records.append(rec)
    return records
