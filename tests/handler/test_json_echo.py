"""The JSON echo is faithful: standard JSON only, non-ASCII text kept as UTF-8 (it grew
6x as \\uXXXX escapes until it no longer fit)."""

from __future__ import annotations

import json

import pytest
from vmcall_helpers import OUT_GVA, buffer_harness, data_call, get

from pyflank.abi import BF_VMCALL_FAILURE, BF_VMCALL_SUCCESS, VmcallDataType


def _echo(payload: bytes, out_size: int = 0x200) -> tuple[int, bytes]:
    h = buffer_harness()
    data_call(h, VmcallDataType.STRING_JSON, payload, out_size=out_size)
    return h.state.rdx, get(h, OUT_GVA, h.state.r12) if h.state.rdx == BF_VMCALL_SUCCESS else b""


def test_non_ascii_text_stays_utf8_and_the_same_size() -> None:
    text = '{"city":"Köln","name":"Zoë","note":"日本語"}'.encode()  # keys in byte order
    status, reply = _echo(text, out_size=len(text))  # an output buffer just the input's size
    assert status == BF_VMCALL_SUCCESS
    assert reply == text
    assert json.loads(reply) == json.loads(text)


@pytest.mark.parametrize("payload", [b"NaN", b'{"x": Infinity}', b"[-Infinity]"])
def test_non_standard_numbers_are_never_echoed(payload: bytes) -> None:
    status, reply = _echo(payload)
    assert status == BF_VMCALL_FAILURE and reply == b""


def test_a_lone_surrogate_is_refused_rather_than_written_as_invalid_utf8() -> None:
    status, reply = _echo(b'["\\ud800"]')
    assert status == BF_VMCALL_FAILURE and reply == b""
