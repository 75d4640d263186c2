"""The disk spool: durable batches, replayed in order, set aside when unreadable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shipper.cursor import Position
from shipper.spool import RETRY_AFTER, Spool, SpoolError


def test_batches_come_back_in_order_with_their_bodies_and_marks(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "s"), 10**6)
    assert spool.load() == []
    a = spool.write(3, 30, {"/f": Position(1, 2, 40)}, b"body-a\n\x00binary")
    b = spool.write(1, 5, {}, b"body-b")
    assert spool.used == a.file_bytes + b.file_bytes
    # A new process (restart) sees both, oldest first, and continues the numbering.
    again = Spool(str(tmp_path / "s"), 10**6)
    loaded = again.load()
    assert [(e.seq, e.lines, e.line_bytes, e.positions) for e in loaded] == [
        (1, 3, 30, {"/f": Position(1, 2, 40)}), (2, 1, 5, {})]
    assert [again.read_body(e) for e in loaded] == [b"body-a\n\x00binary", b"body-b"]
    assert again.used == spool.used
    again.remove(loaded[0])
    assert again.used == loaded[1].file_bytes
    assert again.write(1, 1, {}, b"c").seq == 3
    assert sorted(os.listdir(tmp_path / "s")) == ["000000000002.batch", "000000000003.batch"]


def test_leftovers_of_an_interrupted_write_are_removed_and_garbage_set_aside(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "000000000001.batch.tmp").write_bytes(b"half")
    (d / "000000000002.batch").write_bytes(b"not json\nbody")
    (d / "checkpoint.json").write_text("{}")  # other files are left alone
    spool = Spool(str(d), 10**6)
    assert spool.load() == []
    assert spool.corrupt == [str(d / "000000000002.batch")]
    assert sorted(os.listdir(d)) == ["000000000002.batch.corrupt", "checkpoint.json"]


def test_an_unusable_directory_is_a_spool_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match=r"^spool_dir .*/file/sub: "):
        Spool(str(tmp_path / "file" / "sub"), 10**6)


def test_a_batch_file_written_by_the_previous_version_is_read(tmp_path: Path) -> None:
    d = tmp_path / "s"
    d.mkdir()
    (d / "000000000005.batch").write_bytes(b'{"lines":2,"line_bytes":7,"marks":[["/f",1,2,40]]}\nBODY')
    spool = Spool(str(d), 10**6)
    (entry,) = spool.load()
    assert (entry.seq, entry.lines, entry.line_bytes, entry.positions) == (5, 2, 7, {"/f": Position(1, 2, 40)})
    assert spool.read_body(entry) == b"BODY"
    # And written the same way: the header names positions `marks`, as before.
    again = spool.write(1, 1, {"/g": Position(3, 4, 5)}, b"b")
    assert Path(again.path).read_bytes() == b'{"lines":1,"line_bytes":1,"marks":[["/g",3,4,5]]}\nb'


def test_after_a_failed_write_the_spool_has_no_room_for_a_while_on_the_clock_given(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "s"), 10**6)
    spool.failed_at = 100.0
    assert not spool.has_room(100.0 + RETRY_AFTER - 0.001)
    assert spool.has_room(100.0 + RETRY_AFTER)
    assert spool.failed_at is None
