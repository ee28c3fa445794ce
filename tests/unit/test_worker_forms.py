"""worker.forms: form bodies split into fields, as TorchServe's front end splits them."""

from __future__ import annotations

import pytest

from tests.support.forms import multipart
from zerobatch.worker.forms import MAX_FIELDS, FormError, decode_form

BOUNDARY = "------------------------d74496d66958873e"


def test_a_file_part_and_a_plain_field():
    body = multipart(BOUNDARY, ("data", "kitten.png", "image/png", b"\x89PNG\r\n\x1a\n--"),
                     ("note", None, None, b"hello"))
    values, types = decode_form(f"multipart/form-data; boundary={BOUNDARY}", body)
    assert values == {"data": bytearray(b"\x89PNG\r\n\x1a\n--"), "note": bytearray(b"hello")}
    assert types == {"data": "image/png", "note": ""}
    assert all(type(value) is bytearray for value in values.values())


@pytest.mark.parametrize("content_type, content, expected", [
    ("application/json", b'{"a": [1, 2]}', {"a": [1, 2]}),
    ("text/plain", "h\u00e9".encode(), "h\u00e9"),
    (None, b"\x00\xff", bytearray(b"\x00\xff")),  # no Content-Type: octet-stream
    ("application/json", b"{not json", bytearray(b"{not json")),  # passed on raw
])
def test_file_parts_are_decoded_by_their_content_type(content_type, content, expected):
    body = multipart("b", ("data", "input", content_type, content))
    values, types = decode_form("multipart/form-data; boundary=b", body)
    assert values == {"data": expected}
    assert types == {"data": content_type or "application/octet-stream"}


def test_plain_fields_stay_bytes_whatever_their_type():
    body = multipart("b", ("data", None, "application/json", b"[1]"))
    assert decode_form("multipart/form-data; boundary=b", body)[0] == {"data": bytearray(b"[1]")}


def test_quoted_boundary_preamble_epilogue_and_quoted_names():
    body = (b"a preamble\r\n" + multipart("x;y", ("we\\\"ird;name", "a;b.txt", "text/plain",
                                                    b"text")) + b"an epilogue")
    values, _ = decode_form('Multipart/Form-Data; boundary="x;y"', body)
    assert values == {'we"ird;name': "text"}


def test_a_name_given_twice_keeps_its_last_value():
    body = multipart("b", ("data", None, None, b"first"), ("data", None, None, b"last"))
    assert decode_form("multipart/form-data; boundary=b", body)[0] == {"data": bytearray(b"last")}


def test_an_empty_form_and_an_empty_field():
    assert decode_form("multipart/form-data; boundary=b", b"--b--\r\n") == ({}, {})
    body = multipart("b", ("data", None, None, b""))
    assert decode_form("multipart/form-data; boundary=b", body)[0] == {"data": bytearray()}


def test_urlencoded_fields():
    values, types = decode_form("application/x-www-form-urlencoded",
                                b"a=1&text=h%C3%A9llo+world&empty=&a=2")
    assert values == {"a": bytearray(b"2"), "text": bytearray("h\u00e9llo world".encode()),
                      "empty": bytearray()}
    assert types == {"a": "", "text": "", "empty": ""}


@pytest.mark.parametrize("body, names", [
    (b"x", []), (b"x&", ["x"]), (b"x=", ["x"]), (b"x&y=1", ["x", "y"]), (b"a=1&x", ["a"]),
])
def test_a_last_urlencoded_field_without_a_value_is_no_field(body, names):
    """As Netty's decoder reads them (TorchServe 0.12, recorded in
    tests/data/torchserve_answers/errors.json): `curl -d x` hands the handler {}."""
    values, _types = decode_form("application/x-www-form-urlencoded", body)
    assert sorted(values) == names


def test_other_content_types_are_not_forms():
    assert decode_form("application/octet-stream", b"a=1") is None
    assert decode_form("application/vnd.format", b"a=1") is None
    # no boundary: Netty does not read it as a form, and TorchServe passes the raw body
    assert decode_form("multipart/form-data", b"--b--") is None


def test_a_file_part_reports_its_media_type_without_parameters():
    body = multipart("b", ("j", "x.json", "application/json; charset=utf-8", b'{"r": 2}'))
    assert decode_form("multipart/form-data; boundary=b", body) == (
        {"j": {"r": 2}}, {"j": "application/json"})


@pytest.mark.parametrize("content_type, body, message", [
    ("multipart/form-data; boundary=" + "b" * 71, b"", "needs a boundary parameter"),
    ('multipart/form-data; boundary=""', b"", "needs a boundary parameter"),
    ("multipart/form-data; boundary=b", b"no boundary here", "no part that begins"),
    ("multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\ncut short', "ends before"),
    ("multipart/form-data; boundary=b", b"--b\r\nno colon\r\n\r\nv\r\n--b--",
     "malformed header"),
    ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: attachment\r\n\r\nv"
     b"\r\n--b--", "Content-Disposition of form-data with a name"),
    ("multipart/form-data; boundary=b", b"--b\r\n\r\nv\r\n--b--",
     "Content-Disposition of form-data with a name"),
    ("multipart/form-data; boundary=b", b"--bjunk\r\n\r\nv\r\n--b--", "boundary line"),
    ("application/x-www-form-urlencoded", "\u00e9=1".encode(), "url-encoded form body"),
])
def test_malformed_forms_say_what_is_wrong(content_type, body, message):
    with pytest.raises(FormError, match=message):
        decode_form(content_type, body)


def test_more_fields_than_the_limit_is_an_error_not_a_memory_spike():
    with pytest.raises(FormError, match=f"more than {MAX_FIELDS} fields"):
        decode_form("application/x-www-form-urlencoded", b"a&" * 3_000_000)
    parts = [("f", None, None, b"")] * (MAX_FIELDS + 1)
    with pytest.raises(FormError, match=f"more than {MAX_FIELDS} fields"):
        decode_form("multipart/form-data; boundary=b", multipart("b", *parts))
    exactly = decode_form("application/x-www-form-urlencoded", b"&".join([b"a=1"] * MAX_FIELDS))
    assert exactly[0] == {"a": bytearray(b"1")}
