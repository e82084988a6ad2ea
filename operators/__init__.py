"""Stream operators: map, update, filter, flat_map, branch, group_by, through, take and to.

Used through the declarative form ``app.stream(topic)``, which returns a :class:`Dataflow`;
the worker compiles each dataflow once into a chain of plain function calls.
"""

from __future__ import annotations

from flowbus.operators.dataflow import Dataflow, compile_dataflows
from flowbus.operators.steps import (
    BranchStep,
    FilterStep,
    FlatMapStep,
    GroupByStep,
    MapStep,
    Runtime,
    Step,
    TakeStep,
    ThroughStep,
    ToStep,
    UpdateStep,
)

__all__ = [
    "BranchStep",
    "Dataflow",
    "FilterStep",
    "FlatMapStep",
    "GroupByStep",
    "MapStep",
    "Runtime",
    "Step",
    "TakeStep",
    "ThroughStep",
    "ToStep",
    "UpdateStep",
    "compile_dataflows",
]
