"""A table's name, as electric.yaml, the catalog and the wire spell it."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SCHEMA = "public"


@dataclass(frozen=True, slots=True, order=True)
class TableRef:
    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    @classmethod
    def parse(cls, text: str) -> TableRef:
        schema, _, name = text.rpartition(".")
        return cls(schema or DEFAULT_SCHEMA, name)
