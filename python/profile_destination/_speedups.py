"""Faster value lifting for the pinned wasmtime-py (50.0.1).

wasmtime-py lifts every component value through its type: for each
record it asks the C API for the record's fields again, for each variant
its cases, for each list its element type — and it reads every string
through a `ctypes` array type it creates anew for that string's length.
Planning spends most of its time there (the component itself about 7 %).
Types are immutable, so their reflection is cached per type object; a
string is read with `ctypes.string_at`. Both are behaviour-preserving and
applied only to the version they were written against; the golden
vectors run with them.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from typing import Any

import wasmtime._ffi as ffi
import wasmtime.component._types as types

PINNED = "50.0.1"


def _cache(cls: type, name: str) -> None:
    getter = getattr(cls, name).fget
    key = f"_profile_destination_{name}"

    def cached(self: Any) -> Any:
        try:
            return self.__dict__[key]
        except KeyError:
            value = getter(self)
            self.__dict__[key] = value
            return value

    setattr(cls, name, property(cached, doc=getattr(cls, name).__doc__))


def _to_str(vec: Any) -> str:
    return ctypes.string_at(vec.data, vec.size).decode("utf-8") if vec.size else ""


def apply() -> bool:
    """Applies the speedups if wasmtime-py is the pinned version."""
    try:
        version = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        return False
    if version != PINNED or getattr(ffi, "_profile_destination", False):
        return False
    for cls, name in ((types.RecordType, "fields"), (types.VariantType, "cases"), (types.ListType, "element")):
        _cache(cls, name)
    ffi.to_str = _to_str
    ffi._profile_destination = True
    return True
