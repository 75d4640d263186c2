"""shipper.route: processed runs in, each with its stream and encoded metadata out."""

from __future__ import annotations

from shipper.batch import Stream
from shipper.encoder import encode_metadata
from shipper.process import Run
from shipper.route import Router

BASE = Stream('{job="t", stream="stdout"}', name="stdout", label_map={"job": "t", "stream": "stdout"})


def test_a_run_of_the_sources_own_stream_goes_to_it_unchanged() -> None:
    run = Run(None, [b"a", b"b"], None, None, None)
    assert Router(()).route(BASE, [run]) == [(BASE, run, None)]


def test_a_cri_stream_name_gets_a_variant_built_once() -> None:
    router = Router(())
    a = router.route(BASE, [Run("stderr", [b"a"], None, None, None)])
    b = router.route(BASE, [Run("stderr", [b"b"], None, None, None)])
    assert a[0][0] is b[0][0]
    assert a[0][0].labels == '{job="t", stream="stderr"}'
    assert router.route(BASE, [Run("stdout", [b"c"], None, None, None)])[0][0] is BASE


def test_runs_are_cut_where_a_routed_level_changes_and_unrouted_levels_stay() -> None:
    router = Router(["error"])
    run = Run(None, [b"1", b"2", b"3", b"4"], [10, 11, 12, 13], None, ["info", "error", "error", "warning"])
    got = router.route(BASE, [run])
    assert [(s.labels, r.lines, r.times, r.levels) for s, r, _ in got] == [
        (BASE.labels, [b"1"], [10], ["info"]),
        ('{job="t", level="error", stream="stdout"}', [b"2", b"3"], [11, 12], ["error", "error"]),
        (BASE.labels, [b"4"], [13], ["warning"]),
    ]
    # Every entry keeps its level as metadata, routed or not.
    assert [md for _, _, md in got] == [
        [encode_metadata([("level", "info")])],
        [encode_metadata([("level", "error")])] * 2,
        [encode_metadata([("level", "warning")])]]


def test_metadata_pairs_come_before_the_level_and_entries_without_either_have_none() -> None:
    router = Router(())
    run = Run(None, [b"1", b"2", b"3"], None, [(("logger", "x"),), (), (("logger", "x"),)], ["info", None, None])
    ((_, _, md),) = router.route(BASE, [run])
    assert md == [encode_metadata([("logger", "x"), ("level", "info")]), b"", encode_metadata([("logger", "x")])]
    assert router.encoded_metadata(None, None) is None
