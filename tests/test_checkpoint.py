"""Checkpoint file: atomic save, exact load, loud refusal of a corrupt file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.checkpoint import CheckpointError, Position, load, save


def test_missing_file_is_an_empty_checkpoint(tmp_path: Path) -> None:
    assert load(str(tmp_path / "none.json")) == {}


def test_save_then_load_round_trips_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = str(tmp_path / "cp.json")
    positions = {"/logs/b.log": Position(1, 2, 3), "/logs/a \"q\".log": Position(2**40, 7, 10**12)}
    save(path, positions)
    assert load(path) == positions
    assert os.listdir(tmp_path) == ["cp.json"]
    save(path, {"/logs/b.log": Position(1, 2, 99)})  # replaced whole, not merged
    assert load(path) == {"/logs/b.log": Position(1, 2, 99)}


@pytest.mark.parametrize(("text", "why"), [
    ("{", "cannot read it"),
    ('{"version": 2, "files": []}', "version 2, expected 1"),
    ('{"version": 1}', "malformed (KeyError"),
    ('{"version": 1, "files": [{"path": "/x", "dev": 1, "ino": 2}]}', "malformed (KeyError"),
    ('{"version": 1, "files": [{"path": "/x", "dev": "a", "ino": 2, "offset": 0}]}', "malformed (ValueError"),
    ('[]', "malformed (TypeError"),
])
def test_a_corrupt_checkpoint_is_refused_naming_the_file(tmp_path: Path, text: str, why: str) -> None:
    path = tmp_path / "cp.json"
    path.write_text(text)
    with pytest.raises(CheckpointError) as e:
        load(str(path))
    assert str(e.value).startswith(f"checkpoint {path}: ")
    assert why in str(e.value)


def test_a_checkpoint_written_by_the_previous_version_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text('{"version":1,"files":[{"path":"/logs/a.log","dev":2049,"ino":77,"offset":1234}]}')
    assert load(str(path)) == {"/logs/a.log": Position(2049, 77, 1234)}
    save(str(path), load(str(path)))
    assert path.read_text() == '{"version":1,"files":[{"path":"/logs/a.log","dev":2049,"ino":77,"offset":1234}]}'
