"""Faster value lifting for the pinned wasmtime-py (50.0.1).

wasmtime-py lifts every component value through its type: for each
record it asks the C API for the record's fields again, for each variant
its cases, for each list its element type, reads each record field's
name back only to check it — and it reads every string through a
`ctypes` array type it creates anew for that string's length.
Planning spends most of its time there (the component itself about 7 %).
Types are immutable, so their reflection is cached per type object;
fields are taken in the type's order without reading their names; a
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


def _record_from_c(self: Any, c: Any) -> Any:
    # As wasmtime-py's own, but without reading each field's name back
    # from the value: the C API gives fields in the type's order (its own
    # version only asserts that they match).
    assert c.kind == ffi.WASMTIME_COMPONENT_RECORD.value
    try:
        record = types.Record()
        values = record.__dict__
        data = c.of.record.data
        for i, (name, ty) in zip(range(c.of.record.size), self.fields):
            raw = data[i]
            values[name] = ty.convert_from_c(raw.val)
            raw.val.kind = ffi.WASMTIME_COMPONENT_BOOL
            raw.val.of.boolean = False
        return record
    finally:
        ffi.wasmtime_component_valrecord_delete(c.of.record)


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
    types.RecordType.convert_from_c = _record_from_c
    ffi.to_str = _to_str
    ffi._profile_destination = True
    return True
