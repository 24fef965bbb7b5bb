"""The result schema and its migration (``benchmarks.harness.migrate``): an old record is brought to the one
the reports read, nothing in it is lost, and a record the code cannot vouch for is named and left alone."""
import json
import logging
import shutil
from pathlib import Path

import pytest

from benchmarks.harness import migrate
from benchmarks.harness.rundir import RESULT_SCHEMA, read_result, run_lock
from benchmarks.report.runs import load

ROOT = Path(__file__).resolve().parents[1]
#: committed runs written in packed format v1 (their size report had the v1 names before schemas 3 and 4)
V1_RUNS = sorted(p.parent for p in ROOT.glob("results/*/runs/*/result.json")
                 if "pooled_code_entropy_bits" in json.loads(p.read_text()).get("size", {}))


def _as_schema_1(record: dict) -> dict:
    """A current record written back in the layout of before schema 2 (no schema, no checksum, v1 names in
    the size report's totals and per-layer rows)."""
    old = {k: v for k, v in record.items() if k not in ("schema", "packed_sha256")}
    names = {new: old_name for old_name, new in migrate.V1_SIZE_NAMES.items()}
    old["size"] = {names.get(k, k): v for k, v in record["size"].items()}
    rows = {new: old_name for old_name, new in migrate.V1_LAYER_NAMES.items()}
    old["size"]["layers"] = [{rows.get(k, k): v for k, v in row.items()} for row in record["size"]["layers"]]
    return old


@pytest.fixture
def old_run(tmp_path):
    if not V1_RUNS:
        pytest.skip("no committed run in packed format v1")
    folder = tmp_path / "out" / "runs" / V1_RUNS[0].name
    shutil.copytree(V1_RUNS[0], folder)
    committed = json.loads((folder / "result.json").read_text())
    (folder / "result.json").write_text(json.dumps(_as_schema_1(committed)))
    return folder, committed


def test_a_schema_1_record_migrates_to_the_committed_one_and_again_changes_nothing(old_run, caplog):
    folder, committed = old_run
    assert read_result(folder) is None  # not read as it is: the warning names the command that fixes it
    assert f"python -m benchmarks.harness.migrate {folder.parent.parent}" in caplog.text
    assert migrate.main([str(folder.parent.parent)]) == 0
    migrated = json.loads((folder / "result.json").read_text())
    assert migrated == committed and migrated["schema"] == RESULT_SCHEMA
    assert read_result(folder) is not None and len(load(folder.parent.parent).table) == 1
    before = (folder / "result.json").read_bytes()
    assert migrate.migrate_run(folder) == "current" and (folder / "result.json").read_bytes() == before


def test_a_run_whose_packed_file_fails_the_reader_is_left_as_it_is(old_run, caplog):
    folder, _ = old_run
    data = bytearray((folder / "model.packed").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "model.packed").write_bytes(bytes(data))
    before = (folder / "result.json").read_bytes()
    with caplog.at_level(logging.WARNING):
        counts = migrate.migrate_folder(folder.parent.parent)
    assert counts == {"left as it is": 1} and "fails the reader's checks" in caplog.text
    assert (folder / "result.json").read_bytes() == before


def test_a_run_held_by_another_process_and_an_unknown_schema_are_left_alone(old_run):
    folder, committed = old_run
    with run_lock(folder):
        assert migrate.migrate_run(folder) == "busy"
    (folder / "result.json").write_text(json.dumps({**committed, "schema": RESULT_SCHEMA + 1}))
    assert "not one this code knows" in migrate.migrate_run(folder)


def test_migrate_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert migrate.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs" in err[0]


def test_a_record_the_readers_would_refuse_is_not_marked_current(old_run):
    folder, committed = old_run
    broken = _as_schema_1(committed)
    del broken["budget"]  # a record of before the budget was: nothing to migrate it to
    (folder / "result.json").write_text(json.dumps(broken))
    assert "budget" in migrate.migrate_run(folder)
    assert json.loads((folder / "result.json").read_text()) == broken  # untouched, still an old schema


def test_an_error_inside_a_block_that_did_not_get_the_lock_is_not_chained_to_the_timeout(tmp_path):
    from benchmarks.harness.rundir import held

    with run_lock(tmp_path):
        with pytest.raises(ValueError) as e:
            with held(tmp_path) as mine:
                assert not mine
                raise ValueError("the caller's own error")
    assert e.value.__context__ is None


def test_every_committed_result_is_current_and_names_each_quantity_once():
    """What the migration promises of the committed results: at the current schema, and no v1 name left in a
    size report, in its totals or in its per-layer rows (a stale name would be a second name for a number)."""
    stale = set(migrate.V1_SIZE_NAMES) | set(migrate.V1_LAYER_NAMES)
    for path in ROOT.glob("results/*/runs/*/result.json"):
        r = json.loads(path.read_text())
        assert r["schema"] == RESULT_SCHEMA, path
        for key in ("size", "size_before_repack"):
            size = r.get(key) or {}
            assert not stale & set(size), path
            assert not any(stale & set(row) for row in size.get("layers", [])), path
