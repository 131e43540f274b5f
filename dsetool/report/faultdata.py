"""Per-layer and per-bit outcome counts of the campaigns, read from their `faults.parquet` artifacts.

Only single-fault inferences are counted: an inference with several faults (a BER campaign) cannot be
blamed on one layer or one bit, and the campaign records layer and bit only when there is exactly one.
Each campaign is reduced to counts as it is read, so memory stays small however large the campaigns are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dsetool.report.collect import PointResults

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

FAULTS = "faults.parquet"
COLUMNS = ["outcome", "critical", "n_faults", "site", "layer", "bit"]


@dataclass(frozen=True)
class FaultCounts:
    """Counts of single-fault inferences: `by_layer` (point_id, layer, n, sdc, critical) and `by_bit`
    (point_id, site, bit, n, sdc, critical); `layer_order` lists layers in network order."""

    by_layer: pd.DataFrame
    by_bit: pd.DataFrame
    layer_order: tuple[str, ...]

    @property
    def empty(self) -> bool:
        """Tell whether no campaign had a single-fault inference."""
        return self.by_layer.empty


def load(found: Sequence[PointResults]) -> FaultCounts:
    """Count the single-fault outcomes of every campaign the store holds for the experiment."""
    import pyarrow.parquet as pq

    layers: list[pd.DataFrame] = []
    bits: list[pd.DataFrame] = []
    order: list[str] = []
    for p in found:
        entry = p.entries.get("inject")
        if entry is None or FAULTS not in entry.manifest.get("artifacts", {}):
            continue
        single = _single_faults(pq.read_table(entry.artifact(FAULTS), columns=COLUMNS))
        if single.num_rows == 0:
            continue
        layers.append(_count(single, ["layer"]).assign(point_id=p.point_id))
        bits.append(_count(single, ["site", "bit"]).assign(point_id=p.point_id))
        order += _network_order(p)
    return FaultCounts(_concat(layers, ["point_id", "layer"]), _concat(bits, ["point_id", "site", "bit"]),
                       tuple(dict.fromkeys(order)))


def _single_faults(table: pa.Table) -> pa.Table:
    """Keep the inferences with exactly one fault, as plain columns: site, layer, bit, sdc, critical."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.filter(pc.and_(pc.equal(table["n_faults"], 1), pc.greater_equal(table["bit"], 0)))
    return pa.table({"site": table["site"].cast(pa.string()), "layer": table["layer"].cast(pa.string()),
                     "bit": table["bit"], "critical": table["critical"].cast(pa.int64()),
                     "sdc": pc.equal(table["outcome"].cast(pa.string()), "sdc").cast(pa.int64())})


def _count(table: pa.Table, by: list[str]) -> pd.DataFrame:
    """Return n, sdc and critical per group (pyarrow's group-by: a campaign can have millions of rows)."""
    counted = table.group_by(by).aggregate([("sdc", "count"), ("sdc", "sum"), ("critical", "sum")])
    frame = counted.to_pandas().rename(columns={"sdc_count": "n", "sdc_sum": "sdc", "critical_sum": "critical"})
    return frame.sort_values(by, kind="stable").reset_index(drop=True)


def _concat(parts: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    import pandas as pd

    if not parts:
        return pd.DataFrame(columns=[*columns, "n", "sdc", "critical"])
    return pd.concat(parts, ignore_index=True)[[*columns, "n", "sdc", "critical"]]


def _network_order(p: PointResults) -> list[str]:
    from dsetool.config import network_layers

    return network_layers(p.point.config)
