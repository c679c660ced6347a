"""Reading TensorBoard event files back, with TensorBoard's own reader."""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar series under ``logdir`` (all its event files), by tag, then step; a
    step written twice keeps its last value."""
    series: dict[str, dict[int, float]] = {}
    for events in sorted(logdir.rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                series.setdefault(tag, {})[event.step] = event.value
    return series


def as_stored(series: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """``series`` as TensorBoard keeps it: each value a 32-bit float (its ``simple_value``)."""
    return {
        tag: {step: struct.unpack("<f", struct.pack("<f", value))[0] for step, value in by.items()}
        for tag, by in series.items()
    }
