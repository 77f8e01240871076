"""Conversions of a `FrameTable` to pyarrow, pandas and polars (each imported only when used)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tether._tether import FrameTable

DIRECTIONS = ["unknown", "rx", "tx"]


def _need(package: str, method: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"FrameTable.{method}() needs the {package!r} package, which is not installed "
            f"(pip install {package})"
        ) from e


def _flags_and_lengths(table: FrameTable) -> dict[str, Any]:
    """The columns every conversion takes as they are, in output order after ``id``."""
    return {
        "extended": table.extended,
        "remote": table.remote,
        "error": table.error,
        "fd": table.fd,
        "brs": table.brs,
        "esi": table.esi,
        "len": table.len,
        "raw_dlc": table.raw_dlc,
    }


def to_arrow(table: FrameTable) -> Any:
    """The table as a `pyarrow.Table`: numeric columns without a copy, `channel` and
    `direction` as dictionary arrays, `data` as `large_binary` over the table's own buffers."""
    pa = _need("pyarrow", "to_arrow")
    n = len(table)
    data = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(),
        n,
        [None, pa.py_buffer(table.data_offsets), pa.py_buffer(table.data_values)],
    )
    channel = pa.DictionaryArray.from_arrays(
        pa.array(table.channel_codes), pa.array(table.channel_names, type=pa.string())
    )
    direction = pa.DictionaryArray.from_arrays(
        pa.array(table.direction.astype(np.int8)), pa.array(DIRECTIONS, type=pa.string())
    )
    return pa.table(
        {
            "ts_ns": pa.array(table.ts_ns),
            "channel": channel,
            "id": pa.array(table.id),
            **{name: pa.array(column) for name, column in _flags_and_lengths(table).items()},
            "data": data,
            "direction": direction,
        }
    )


def to_pandas(table: FrameTable) -> Any:
    """The table as a `pandas.DataFrame`: `channel` and `direction` as categoricals, `data` as
    `bytes` objects."""
    pd = _need("pandas", "to_pandas")
    data = np.empty(len(table), dtype=object)
    data[:] = table.data_list()
    return pd.DataFrame(
        {
            "ts_ns": table.ts_ns,
            "channel": pd.Categorical.from_codes(table.channel_codes, categories=table.channel_names),
            "id": table.id,
            **_flags_and_lengths(table),
            "data": data,
            "direction": pd.Categorical.from_codes(table.direction, categories=DIRECTIONS),
        }
    )


def to_polars(table: FrameTable) -> Any:
    """The table as a `polars.DataFrame`: `channel` and `direction` as enums, `data` as binary."""
    pl = _need("polars", "to_polars")

    def enum(codes: Any, names: list[str]) -> Any:
        return pl.Series(names, dtype=pl.Enum(names)).gather(codes)

    return pl.DataFrame(
        {
            "ts_ns": table.ts_ns,
            "channel": enum(table.channel_codes, table.channel_names),
            "id": table.id,
            **_flags_and_lengths(table),
            "data": pl.Series(table.data_list(), dtype=pl.Binary),
            "direction": enum(table.direction, DIRECTIONS),
        }
    )
