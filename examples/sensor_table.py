"""Write a sensor table unlike the bundled card data, for the README's bring-your-own-data walk-through.

Accelerometer-like recordings: three numeric channels per reading, no categorical column, no
sequence number, a string activity label per recording and the dataset's own train/test split
in a column, the shape of public human-activity and sensor-classification datasets. Seeded and
generated here, so the walk-through needs no download.

    python examples/sensor_table.py data/sensors.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ACTIVITIES = ("idle", "walking", "running")


def sensor_table(recordings: int = 300, seed: int = 0) -> pa.Table:
    """One row per reading: recording id, time, x/y/z, activity, split (every 4th is test)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 400, recordings)
    activity = rng.integers(0, len(ACTIVITIES), recordings)
    rows = int(lengths.sum())
    rec = np.repeat(np.arange(recordings), lengths)
    step = np.arange(rows) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    # Each activity is a rhythm of the same amplitude: only the order of the readings (their
    # frequency) tells them apart, not their distribution, which an order-blind model sees.
    freq = np.array([0.02, 0.12, 0.3])[activity][rec]
    amp = 1.5
    phase = rng.uniform(0, 2 * np.pi, recordings)[rec]
    wave = amp * np.sin(2 * np.pi * freq * step + phase)
    start = np.datetime64("2025-03-01T00:00:00", "ms") + rng.integers(
        0, 30 * 86_400_000, recordings
    )
    times = start[rec] + step * np.timedelta64(50, "ms")  # 20 Hz
    return pa.table({
        "recording": pa.array([f"rec-{r:04d}" for r in rec]),
        "time": pa.array([f"{t}Z" for t in times.astype("datetime64[ms]")]),
        "x": pa.array(wave + rng.normal(0, 0.3, rows)),
        "y": pa.array(0.5 * wave + rng.normal(0, 0.3, rows)),
        "z": pa.array(9.8 + 0.2 * wave + rng.normal(0, 0.3, rows)),
        "activity": pa.array([ACTIVITIES[a] for a in activity[rec]]),
        "split": pa.array(np.where(rec % 4 == 3, "test", "train")),
    })  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="CSV file to write")
    parser.add_argument("--recordings", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pacsv.write_csv(sensor_table(args.recordings, args.seed), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
