"""The backend's command packer writes the bytes redis-py's own packer writes, for every kind
of argument redis-py takes, and a client made by ``client_from_url`` uses it on real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import HiredisRespSerializer, PythonRespSerializer

from celery_fork_scheduler.backends import packing
from celery_fork_scheduler.backends.redis_connection import client_from_url

pytestmark = pytest.mark.skipif(
    not packing.packer_options(), reason="hiredis (a dependency) is not installed"
)

ARGUMENTS = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary().map(bytearray),
    st.binary().map(memoryview),
)
NAMES = st.sampled_from(
    ["SET", "EVALSHA", "SCRIPT LOAD", "CLIENT SETNAME", b"GET", b"SCRIPT FLUSH"]
)


@given(NAMES, st.lists(ARGUMENTS, max_size=12))
def test_packed_as_redis_py_packs(name: Any, arguments: list[Any]) -> None:
    ours = b"".join(packing.HiredisPacker().pack(name, *arguments))
    theirs = b"".join(bytes(chunk) for chunk in HiredisRespSerializer().pack(name, *arguments))
    assert ours == theirs


def test_packed_as_redis_pys_pure_python_packer_too() -> None:
    """Without hiredis, redis-py packs in Python: the same bytes (floats as ``repr``)."""
    arguments = ("EVALSHA", "sha", 3, "ké", b"\x00\xff", 1.5, -7, bytearray(b"x"))
    python = PythonRespSerializer(6000, lambda value: _encode(value))
    assert b"".join(packing.HiredisPacker().pack(*arguments)) == b"".join(
        bytes(chunk) for chunk in python.pack(*arguments)
    )


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, float):
        return repr(value).encode()
    return str(value).encode()


def test_a_backend_client_packs_with_it_on_real_redis(redis_url: str) -> None:
    client = client_from_url(redis_url)
    try:
        connection = client.connection_pool.get_connection()
        assert isinstance(connection._command_packer, packing.HiredisPacker)
        client.connection_pool.release(connection)
        client.set("packing:bytearray", bytearray(b"value"))
        client.set("packing:memoryview", memoryview(b"view"))
        sha = client.script_load("return ARGV[1] .. ARGV[2]")
        assert client.get("packing:bytearray") == b"value"
        assert client.get("packing:memoryview") == b"view"
        assert client.evalsha(sha, 0, "ké", 12) == "ké12".encode()
    finally:
        client.delete("packing:bytearray", "packing:memoryview")
        client.close()
