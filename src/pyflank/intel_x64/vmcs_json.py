"""A VMCS as JSON: fields by SDM name, values as hex strings, with a format version.

The document is for saving a failing VM entry or a guest snapshot and loading
it back (into a test, a dump, the VM-entry checks).  Loading writes every field
the way the processor does, read-only exit-information fields included.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from pyflank.intel_x64.fields import ALL_FIELDS, FIELD_BY_NAME
from pyflank.intel_x64.vmcs import Vmcs

FORMAT: Final[str] = "pyflank-vmcs"
VERSION: Final[int] = 1
_HEX = re.compile(r"0x[0-9a-fA-F]{1,16}\Z")
_FULL_FIELDS = tuple(field for field in ALL_FIELDS if not field.is_high)


def vmcs_to_json(vmcs: Vmcs) -> str:
    """Every full-width field (64-bit fields once, at full width), in SDM order."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "fields": {field.name: f"{vmcs.read(field.encoding):#x}" for field in _FULL_FIELDS},
    }
    return json.dumps(document, indent=1)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _field_value(name: str, text: Any) -> tuple[int, int]:
    field = FIELD_BY_NAME.get(name)
    if field is None:
        raise ValueError(f"unknown VMCS field name {name!r}")
    if field.is_high:
        raise ValueError(f"{name!r} is the high half of a 64-bit field; give the full field")
    if not isinstance(text, str) or not _HEX.match(text):
        raise ValueError(f"field {name!r}: value must be a hex string like '0x1f', not {text!r}")
    value = int(text, 16)
    if value > field.mask:
        raise ValueError(f"field {name!r}: {text} does not fit in {field.bits} bits")
    return field.encoding, value


def vmcs_from_json(text: str) -> Vmcs:
    """A new VMCS holding the document's fields; fields it leaves out read as 0."""
    try:
        document = _object(json.loads(text), "a VMCS document")
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at line {error.lineno}") from None
    if document.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} document (format is {document.get('format')!r})")
    if document.get("version") != VERSION:
        raise ValueError(f"unsupported {FORMAT} version {document.get('version')!r}")
    unknown = set(document) - {"format", "version", "fields"}
    if unknown:
        raise ValueError(f"unknown top-level keys {sorted(unknown)}")
    vmcs = Vmcs()
    for name, value in _object(document.get("fields", {}), "'fields'").items():
        encoding, number = _field_value(name, value)
        vmcs.processor_write(encoding, number)
    return vmcs
