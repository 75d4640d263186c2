"""shipper.toml_out: whatever it writes, tomllib reads back to the same values."""

from __future__ import annotations

import math
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper import toml_out

CONTROL = [chr(c) for c in [*range(0x20), 0x7F]]
HOSTILE = ['quote " and backslash \\', "é ✓ 😀 \u2028 \ufeff", "'single' '''triple'''", '"""', "a\r\nb", "#x", "[x]"]


def roundtrip(table: dict[str, Any]) -> dict[str, Any]:
    return tomllib.loads(toml_out.dumps(table))


@pytest.mark.parametrize("char", CONTROL)
def test_every_control_character_is_escaped_in_values_keys_and_comments(char: str) -> None:
    table = {f"k{char}": f"a{char}b", "t": {f"n{char}": [f"x{char}"]}}
    text = toml_out.dumps(table, comments={"": [f"top{char}note"], "t": [f"c{char}"]})
    for line in text.split("\n"):  # \n: only between lines, never inside one
        # TOML allows a raw tab in a comment (and the writer leaves it there), nowhere else here.
        assert char not in line or (char == "\t" and line.startswith("#")), line
    assert tomllib.loads(text) == table


@pytest.mark.parametrize("s", HOSTILE)
def test_quotes_backslashes_and_non_ascii_roundtrip(s: str) -> None:
    assert roundtrip({"v": s, s: [s], "t": {s: s}}) == {"v": s, s: [s], "t": {s: s}}


def test_floats_including_inf_and_nan() -> None:
    values = [0.0, -0.0, 1e-5, 1e16, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, 0.1 + 0.2]
    assert roundtrip({"f": values})["f"] == values
    assert math.isnan(roundtrip({"f": math.nan})["f"])


def test_layout_plain_values_first_then_tables_then_lists_of_tables() -> None:
    text = toml_out.dumps({"t": {"a": 1}, "x": 1, "s": [{"p": "/a"}, {"p": "/b"}], "e": [], "l": [1, "two"]})
    assert text == ('x = 1\ne = []\nl = [1, "two"]\n\n[t]\na = 1\n\n[[s]]\np = "/a"\n\n[[s]]\np = "/b"\n')


def test_comments_go_above_their_key_table_or_list_item() -> None:
    text = toml_out.dumps({"loki": {"url": "u"}, "sources": [{"path": "/a"}]},
                          comments={"": ["top"], "loki": ["table"], "loki.url": ["key"], "sources[0]": ["item"]})
    assert text == ('# top\n\n# table\n[loki]\n# key\nurl = "u"\n\n# item\n[[sources]]\npath = "/a"\n')


def test_nested_tables_inside_lists_of_tables() -> None:
    table = {"s": [{"a": 1, "sub": {"b": 2, "deeper": {"c": [{"d": 3}]}}}, {"a": 4}], "t": {"u": {}}}
    assert roundtrip(table) == table


def test_keys_are_bare_only_when_toml_allows() -> None:
    assert [toml_out.key(k) for k in ["a-b_1", "", "a.b", "é", "a b"]] == ["a-b_1", '""', '"a.b"', '"é"', '"a b"']


@pytest.mark.parametrize("v", [None, object(), b"bytes", {1, 2}])
def test_what_toml_cannot_hold_is_a_type_error(v: object) -> None:
    with pytest.raises(TypeError):
        toml_out.value(v)


keys_st = st.text(max_size=8)
scalars_st = (st.text(max_size=20) | st.integers(-2**63, 2**63 - 1) | st.booleans()
              | st.floats(allow_nan=False))  # nan != nan: test_floats_including_inf_and_nan has it
values_st = st.recursive(
    scalars_st,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys_st, children, max_size=4),
    max_leaves=30)


@settings(max_examples=400)
@given(st.dictionaries(keys_st, values_st, max_size=6))
def test_property_roundtrip(table: dict[str, Any]) -> None:
    assert roundtrip(table) == table
