"""The base of lcm-fleet's enums: a ``str`` enum that prints as its value.

Values stay plain text on the wire and in files (``"succeeded"``, ``"int8"``) and compare
equal to it; ``str()`` and f-strings give the value too (Python 3.11's ``str``-mixin enums
would print ``JobState.SUCCEEDED``).
"""

from __future__ import annotations

from enum import Enum


class TextEnum(str, Enum):
    def __str__(self) -> str:
        return str(self.value)
