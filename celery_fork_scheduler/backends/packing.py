"""Packing commands for Redis with hiredis, without redis-py's pass over every argument.

redis-py's hiredis packer first copies each command's arguments to turn ``bytearray`` and
``memoryview`` values into ``bytes``, in Python. A claim batch has about 30 arguments per
slot, so that pass cost more than hiredis's own packing. :class:`HiredisPacker` looks at the
arguments' types at C speed (``set(map(type, args))``) and hands them to hiredis as they are
when there is no ``bytearray`` or ``memoryview`` among them; any other command is packed by
redis-py's own packer. The bytes are the same either way.
"""

from __future__ import annotations

import inspect
from typing import Any

from redis.connection import AbstractConnection, HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

if HIREDIS_AVAILABLE:
    import hiredis


class HiredisPacker:
    """A redis-py ``command_packer``: hiredis's ``pack_command`` of the arguments as given,
    redis-py's own packer for a command hiredis must not pack as they are (a ``bytearray`` or
    ``memoryview`` argument: hiredis refuses the one and reads the other's buffer as if it
    were contiguous), whose name redis-py splits (whitespace in it, or an empty name), or that
    hiredis refuses (a ``bytearray`` subclass, a value Redis cannot take: redis-py's
    ``DataError`` then)."""

    def __init__(self) -> None:
        serializer_class: Any = HiredisRespSerializer  # typed in some redis-py versions only
        self._redis_py = serializer_class()

    def pack(self, *args: Any) -> list[bytes]:
        """The command as RESP bytes (a list of one, as redis-py's packers return)."""
        name = args[0]
        if type(name) is str and name.split() == [name]:
            kinds = set(map(type, args))
            if bytearray not in kinds and memoryview not in kinds:
                try:
                    return [hiredis.pack_command(args)]
                except TypeError:  # a value it refuses: redis-py's packer says DataError
                    pass
        return list(self._redis_py.pack(*args))


def packer_options() -> dict[str, Any]:
    """Client keywords that make a redis-py client pack with :class:`HiredisPacker` (none
    without hiredis, or with a redis-py whose connections take no ``command_packer``)."""
    if not HIREDIS_AVAILABLE:
        return {}
    if "command_packer" not in inspect.signature(AbstractConnection.__init__).parameters:
        return {}
    return {"command_packer": HiredisPacker()}
