"""Partitions: academic year × university. Dagster orders the dimensions by name, so the key string
is "<academic_year>|<institution>", e.g. "2019|unife"."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import MultiPartitionKey, MultiPartitionsDefinition, StaticPartitionsDefinition

from etl.config import Settings
from etl.errors import EscSyncError

YEAR, INSTITUTION = "academic_year", "institution"


@dataclass(frozen=True, order=True)
class Partition:
    academic_year: int
    institution: str

    @property
    def key(self) -> str:
        return f"{self.academic_year}|{self.institution}"

    def dagster_key(self) -> MultiPartitionKey:
        return MultiPartitionKey({YEAR: str(self.academic_year), INSTITUTION: self.institution})

    @classmethod
    def parse(cls, key: str | MultiPartitionKey) -> Partition:
        if isinstance(key, MultiPartitionKey):
            dims = key.keys_by_dimension
            return cls(int(dims[YEAR]), dims[INSTITUTION])
        year, _, institution = str(key).partition("|")
        if not year.isdigit() or not institution:
            raise EscSyncError(
                f"partition key {key!r} is not '<academic year>|<university>', e.g. '2019|unife'"
            )
        return cls(int(year), institution)


def partitions_def(settings: Settings) -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {
            YEAR: StaticPartitionsDefinition([str(y) for y in settings.academic_years]),
            INSTITUTION: StaticPartitionsDefinition(settings.codes),
        }
    )


def all_partitions(settings: Settings) -> list[Partition]:
    return [Partition(y, code) for code in settings.codes for y in settings.academic_years]
