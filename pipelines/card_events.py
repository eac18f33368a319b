"""The generated card-transaction event log: its vocabularies, columns and Arrow table.

``EventArrays`` holds the log as entity-major numpy columns, the form both the generator
(``pipelines.generate``) and the fault planter (``pipelines.faults``) work on; ``to_table``
turns them into the arrival-ordered Arrow table that the ingest stage writes. The generator
calls the fault planter and both import this module, so the two never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MCC_CODES = (
    "5411", "5541", "5812", "5814", "5912", "5311", "5999", "4111", "4121", "5732",
    "5815", "7011", "4511", "5691", "5942", "7832", "4900", "5200", "6011", "8099",
)  # fmt: skip
CHANNELS = ("pos", "online", "atm", "contactless")
COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "BR", "JP")
DEVICES = ("chip_reader", "mobile_app", "web", "atm_terminal", "wearable")
US_PER_S = 1_000_000

ROW_FIELDS = ("entity", "time", "time_valid", "arrival", "seq", "amount", "mcc", "channel",
              "country", "device", "label")  # fmt: skip
"""The per-row columns of ``EventArrays`` (the rest are per-log vocabularies)."""


@dataclass
class EventArrays:
    """Entity-major event columns (rows of an entity contiguous, in sequence order).

    ``arrival`` is the clean event time used to order the stream; faults change ``time``
    in place but not where a row arrives.
    """

    entity: np.ndarray  # (N,) int64 entity index into ``entity_ids``; -1 = null
    time: np.ndarray  # (N,) int64 microseconds since epoch, UTC
    time_valid: np.ndarray  # (N,) bool; False = null time
    arrival: np.ndarray  # (N,) int64 arrival key (microseconds)
    seq: np.ndarray  # (N,) int64
    amount: np.ndarray  # (N,) float64
    mcc: np.ndarray  # (N,) int32 index into MCC_CODES
    channel: np.ndarray  # (N,) int32 index into ``channels``
    country: np.ndarray  # (N,) int32
    device: np.ndarray  # (N,) int32
    label: np.ndarray  # (N,) int64
    entity_ids: list[str]
    channels: list[str]

    def take(self, index: np.ndarray) -> EventArrays:
        """The rows at ``index``, sharing this log's vocabularies."""
        fields = {name: getattr(self, name)[index] for name in ROW_FIELDS}
        return EventArrays(**fields, entity_ids=self.entity_ids, channels=self.channels)

    def concat(self, extra: EventArrays) -> EventArrays:
        """These rows followed by ``extra``'s (which must use this log's vocabularies)."""
        fields = {
            name: np.concatenate([getattr(self, name), getattr(extra, name)]) for name in ROW_FIELDS
        }
        return EventArrays(**fields, entity_ids=self.entity_ids, channels=self.channels)


def to_table(arrays: EventArrays, names: dict[str, str]) -> pa.Table:
    """Arrival-ordered Arrow table; ``names`` maps roles to the user's column names."""
    order = np.argsort(arrays.arrival, kind="stable")
    a = arrays.take(order)
    ids = pa.array(arrays.entity_ids, type=pa.string())
    entity = ids.take(pa.array(np.where(a.entity < 0, 0, a.entity), mask=a.entity < 0))
    time = pa.array(a.time, type=pa.int64(), mask=~a.time_valid).cast(pa.timestamp("us", tz="UTC"))

    def dictionary(codes: np.ndarray, values: tuple[str, ...] | list[str]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(list(values)))

    columns = {
        names["entity"]: entity,
        names["time"]: time,
        names["seq"]: pa.array(a.seq, pa.int64()),
        "amount": pa.array(a.amount, pa.float64()),
        "mcc": dictionary(a.mcc, MCC_CODES),
        "channel": dictionary(a.channel, arrays.channels),
        "country": dictionary(a.country, COUNTRIES),
        "device": dictionary(a.device, DEVICES),
        names["label"]: pa.array(a.label, pa.int64()),
    }
    return pa.table(columns)
