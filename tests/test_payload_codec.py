"""The payload codec: msgspec writes the stored bytes of float-free payloads, and they must
be byte for byte the canonical form (json.dumps, compact, UTF-8, ensure_ascii off) that the
records held before it: stored bytes never change meaning, and replay, snapshots and the
PostgreSQL backend compare and index them as they are."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from aurora_log import job as J
from aurora_log.bulk import encode_payloads
from aurora_log.job import encode_json, encode_payload


def canonical(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


# text with every escape class: quotes, backslash, the C0 controls (short escapes and
# \\u00XX), DEL and C1, the JS line separators, BOM, astral characters
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.sampled_from(
    ['"', "\\", "/", "\b\f\n\r\t", "\x00\x01\x1f", "\x7f\x80\x9f", "\u2028\u2029",
     "\ufeff", "\U0001f600", "é", ""])
_ints = st.integers() | st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
                                         -2**63, -2**63 - 1, 10**40, -10**40])
_scalars = st.none() | st.booleans() | _ints | _text
_float_free = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner,
                                                                          max_size=4),
    max_leaves=20)
_payloads = st.dictionaries(_text, _float_free, max_size=6)


@settings(max_examples=400, deadline=None)
@given(_payloads)
def test_fast_encoder_writes_the_canonical_bytes(payload):
    assert J._fast_encode is not None, "msgspec is a dependency: the fast path must exist"
    assert J._float_free(payload)
    assert J._fast_encode(payload) == canonical(payload)
    assert encode_payload(payload) == canonical(payload)


@settings(max_examples=200, deadline=None)
@given(st.lists(_payloads, max_size=8))
def test_bulk_encoding_is_the_same_as_one_by_one(payloads):
    assert encode_payloads(payloads, 1 << 20) == [canonical(p) for p in payloads]


@pytest.mark.parametrize("value", [1e16, 1e-05, 1e300, -0.0, 0.1, 1.5, 5e-324, 2.5e-7,
                                   123456789012345678.0])
def test_floats_keep_the_canonical_spelling(value):
    # msgspec spells these 1e16 / 1e-5 / 1e300: a payload with a float must not reach it
    p = {"x": value, "nested": [{"y": value}]}
    assert not J._float_free(p)
    assert encode_payload(p) == canonical(p)
    assert encode_payloads([p, {"a": 1}], 1 << 20) == [canonical(p), b'{"a":1}']


def test_str_subclass_keys_and_deep_nesting_encode_canonically():
    class Key(str):
        pass
    assert encode_payload({Key("k"): 1}) == b'{"k":1}'
    deep: dict = {}
    cur = deep
    for _ in range(450):            # under the validator's limit, past msgspec's comfort
        cur["a"] = {}
        cur = cur["a"]
    assert encode_payload(deep) == canonical(deep)


@pytest.mark.parametrize("bad, err", [
    ({"a": "\ud800"}, ValueError),          # a lone surrogate: msgspec refuses, json names it
    ({"a": float("nan")}, ValueError),
    ({"a": (1, 2)}, TypeError),              # msgspec would write a tuple as a list
    ({1: 2}, TypeError),                      # msgspec would write the key as "1"
    ({"a": {1, 2}}, TypeError),
    ({"a": b"x"}, TypeError),
])
def test_what_msgspec_would_accept_is_still_refused(bad, err):
    with pytest.raises(err):
        encode_payload(bad)
    with pytest.raises(err, match=r"payloads\[1\]"):
        encode_payloads([{}, bad], 1 << 20)


def test_results_keep_their_encoder():
    # encode_json (results, any JSON value) is unchanged: the canonical form
    assert encode_json([1.0, "é", None]) == canonical([1.0, "é", None])


def test_payload_size_limit_names_the_payload():
    with pytest.raises(ValueError, match=r"payloads\[2\] is 14 bytes.*limit is 13"):
        encode_payloads([{}, {}, {"a": "123456"}], 13)
