"""Columnar logs: `tether.read_log` / `iter_log` / `write_log` and `FrameTable`.

Every table is checked frame by frame against `tether can convert --to jsonl` (the Rust
readers through the real binary) on the shared captures, and against python-can's reader.
Needs TETHER_BIN (the built `tether` binary) and the module installed in the virtualenv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import can
import numpy as np
import pytest

import tether

ROOT = Path(__file__).resolve().parents[2]
# shared/ sits beside the repository (CI); TETHER_SHARED_DATA points elsewhere (a git worktree).
DATA = Path(os.environ.get("TETHER_SHARED_DATA", ROOT.parent / "shared" / "data" / "can"))
CAPTURE = ROOT / "data" / "captures" / "nissan-leaf-isotp.log"
TETHER = os.environ.get("TETHER_BIN", "tether")

CAPTURES = [
    DATA / "savvycan-candump.log",
    DATA / "candump-forms.log",
    CAPTURE,
    DATA / "python-can-asc" / "test_CanFdMessage.asc",
    DATA / "python-can-asc" / "test_CanErrorFrames.asc",
    DATA / "python-can-asc" / "test_CanRemoteMessage.asc",
]


def converted(path: Path) -> list[dict[str, Any]]:
    """What `tether can convert --to jsonl` makes of `path`."""
    out = subprocess.run(
        [TETHER, "can", "convert", str(path), "--to", "jsonl"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def rows(table: tether.FrameTable) -> list[dict[str, Any]]:
    """The table's rows in the JSON-lines shape, built from the columns."""
    names = table.channel_names
    dirs = {0: None, 1: "rx", 2: "tx"}
    offsets, values = table.data_offsets, table.data_values
    return [
        {
            "ts_ns": int(table.ts_ns[i]),
            "channel": names[int(table.channel_codes[i])],
            "id": int(table.id[i]),
            "extended": bool(table.extended[i]),
            "remote": bool(table.remote[i]),
            "error": bool(table.error[i]),
            "fd": bool(table.fd[i]),
            "brs": bool(table.brs[i]),
            "esi": bool(table.esi[i]),
            "len": int(table.len[i]),
            "data": bytes(values[offsets[i]:offsets[i + 1]]).hex().upper(),
            "dir": dirs[int(table.direction[i])],
        }
        for i in range(len(table))
    ]


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.name)
def test_tables_match_tether_can_convert_frame_by_frame(path: Path) -> None:
    table = tether.read_log(path)
    expected = converted(path)
    assert len(table) == len(expected) > 0
    assert rows(table) == expected
    # The same bytes in memory give the same table; so do the other byte types.
    raw = path.read_bytes()
    for source in (raw, bytearray(raw), memoryview(raw), str(path)):
        assert rows(tether.read_log(source)) == expected


def test_column_types_and_the_2d_payload() -> None:
    table = tether.read_log(DATA / "candump-forms.log")
    assert table.format == "candump" and table.dropped == 3 and table.bad_lines == []
    dtypes = {name: str(col.dtype) for name, col in table.columns.items()}
    assert dtypes == {
        "ts_ns": "int64", "id": "uint32", "extended": "bool", "remote": "bool", "error": "bool",
        "fd": "bool", "brs": "bool", "esi": "bool", "len": "uint8", "raw_dlc": "uint8",
        "direction": "uint8", "channel_codes": "int32",
    }
    assert table.channel_names == ["can0", "can1"]
    assert list(table.channel_codes[:3]) == [0, 1, 0]
    assert table.channel.tolist()[:3] == ["can0", "can1", "can0"]
    # 12 frames; the longest payload is the 12-byte FD frame, so `data` is 12 × 12.
    assert table.data.shape == (12, 12) and table.data.dtype == np.uint8
    assert bytes(table.data[4]) == bytes.fromhex("AABBCCDDEEFF001122334455")
    assert bytes(table.data[0][:8]) == bytes.fromhex("0210030000000000")
    assert not table.data[2].any()  # a remote frame has no payload
    assert (int(table.len[3]), bool(table.remote[3])) == (8, True)
    assert int(table.raw_dlc[7]) == 0xF
    assert list(table.direction[9:11]) == [2, 1] and table.direction_names == ["unknown", "rx", "tx"]
    assert (bool(table.error[6]), int(table.id[6])) == (True, 4)
    # Columns are read-only: a table is a value.
    with pytest.raises(ValueError):
        table.id[0] = 1
    with pytest.raises(ValueError):
        table.data[0, 0] = 1


def test_rows_are_frames_and_frames_make_tables() -> None:
    frames = tether.parse_log((DATA / "candump-forms.log").read_bytes()).frames
    table = tether.read_log(DATA / "candump-forms.log")
    assert table.frames() == frames and list(table) == frames
    assert table[0] == frames[0] and table[-1] == frames[-1]
    with pytest.raises(IndexError):
        table[len(table)]
    again = tether.FrameTable.from_frames(frames)
    assert rows(again) == rows(table) and again.format is None
    assert len(tether.FrameTable.from_frames([])) == 0


def test_the_same_frames_as_python_can() -> None:
    table = tether.read_log(CAPTURE)
    with can.LogReader(str(CAPTURE)) as reader:
        theirs = list(reader)
    assert len(theirs) == len(table)
    assert table.id.tolist() == [m.arbitration_id for m in theirs]
    assert [bytes(table.data[i][: table.len[i]]) for i in range(len(table))] == [bytes(m.data) for m in theirs]
    assert np.allclose(table.ts_ns / 1e9, [m.timestamp for m in theirs], rtol=0, atol=1e-6)


def test_filtering_by_id_stays_in_rust_and_agrees_with_numpy() -> None:
    table = tether.read_log(CAPTURE)
    wanted = [0x7BB, 0x123]
    by_read = tether.read_log(CAPTURE, ids=wanted)
    by_table = table.filter_ids(wanted)
    by_mask = table.filter(np.isin(table.id, wanted) & ~table.error)
    assert len(by_read) == int((table.id == 0x7BB).sum()) > 100
    assert rows(by_read) == rows(by_table) == rows(by_mask)
    assert set(by_read.id.tolist()) == {0x7BB}
    # The metadata and channel dictionary carry over.
    assert by_table.channel_names == table.channel_names and by_table.format == "candump"
    # Error frames carry class bits, not an identifier: an id filter never keeps them.
    forms = tether.read_log(DATA / "candump-forms.log")
    assert len(forms.filter_ids([4])) == 0
    assert len(forms.filter_ids([])) == 0
    with pytest.raises(ValueError, match="mask"):
        table.filter(np.ones(3, dtype=bool))


def test_iter_log_streams_batches_that_add_up_to_the_whole(tmp_path: Path) -> None:
    log = tmp_path / "two-channels.log"
    log.write_bytes(CAPTURE.read_bytes() + (DATA / "candump-forms.log").read_bytes())
    whole = tether.read_log(log)
    batches = list(tether.iter_log(log, batch=1000))
    assert [len(b) for b in batches[:-1]] == [1000] * (len(batches) - 1)
    assert sum(len(b) for b in batches) == len(whole)
    # Codes mean the same channel in every batch; later batches list every name seen so far.
    assert batches[0].channel_names == ["can1", "can2"]
    assert batches[-1].channel_names == whole.channel_names == ["can1", "can2", "can0"]
    got = [r for b in batches for r in rows(b)]
    assert got == rows(whole)
    assert sum(b.dropped for b in batches) == whole.dropped == 3
    filtered = list(tether.iter_log(log, batch=100, ids=[0x7BB]))
    assert sum(len(b) for b in filtered) == len(whole.filter_ids([0x7BB]))
    with pytest.raises(ValueError):
        tether.iter_log(log, batch=0)
    with pytest.raises(FileNotFoundError):
        tether.iter_log(tmp_path / "missing.log")


BOUNDED = textwrap.dedent(
    """
    import resource, sys
    import tether
    path, batch = sys.argv[1], int(sys.argv[2])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    frames = 0
    for table in tether.iter_log(path, batch=batch):
        frames += len(table)
        table.data  # the 2-D payload too
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(frames, (after - before) // 1024)
    """
)


def test_iter_log_reads_a_large_file_in_bounded_memory(tmp_path: Path) -> None:
    """A 2.6M-frame file (120 MB, about 100 MB as a whole table) is read in batches of 65536
    while the process's peak memory grows by far less than the file or the table."""
    big = tmp_path / "big.log"
    chunk = CAPTURE.read_bytes()
    with big.open("wb") as f:
        for _ in range(460):
            f.write(chunk)
    size_mb = big.stat().st_size >> 20
    assert size_mb > 100
    script = tmp_path / "bounded.py"
    script.write_text(BOUNDED)
    out = subprocess.run(
        [sys.executable, str(script), str(big), "65536"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout.split()
    frames, growth_mb = int(out[0]), int(out[1])
    assert frames == 5588 * 460
    assert growth_mb < 40, f"peak memory grew by {growth_mb} MB reading a {size_mb} MB file"


@pytest.mark.parametrize("fmt", ["candump", "asc", "jsonl"])
def test_write_log_round_trips(tmp_path: Path, fmt: str) -> None:
    table = tether.read_log(DATA / "candump-forms.log")
    out = tmp_path / f"out.{fmt}"
    assert tether.write_log(table, out, fmt) == len(table)
    data = tether.write_log(table, format=fmt)
    assert isinstance(data, bytes) and out.read_bytes() == data
    back = tether.read_log(out)
    assert back.format == fmt
    # What `format_log` writes for the same frames, byte for byte.
    assert data == tether.format_log(table.frames(), fmt)
    if fmt == "asc":  # ASC keeps time relative to its header, and channels as numbers
        assert back.id.tolist() == table.id.tolist()
        assert np.array_equal(back.data, table.data)
    elif fmt == "jsonl":  # no raw DLC in JSON lines
        assert rows(back) == rows(table)
    else:
        assert back.frames() == table.frames()
    with pytest.raises(ValueError):
        tether.write_log(table, format="pcap")


def test_bad_input_raises_a_named_error_or_is_listed() -> None:
    text = b"(1.000000) can0 123#11\n(2.000000) can0 12345678901#11\n(3.000000) can0 124#22\n"
    with pytest.raises(tether.LogFormatError, match="line 2"):
        tether.read_log(text)
    lenient = tether.read_log(text, strict=False)
    assert lenient.id.tolist() == [0x123, 0x124]
    assert [n for n, _ in lenient.bad_lines] == [2]
    # A timestamp past 2262 does not fit int64 nanoseconds: refused by number, not wrapped.
    late = b"(1.000000) can0 123#11\n(10000000000.000000) can0 123#11\n"
    with pytest.raises(tether.LogFormatError, match="line 2: timestamp .* int64"):
        tether.read_log(late)
    assert [n for n, _ in tether.read_log(late, strict=False).bad_lines] == [2]
    with pytest.raises(tether.LogFormatError):
        tether.read_log(b"hello world\n")
    with pytest.raises(FileNotFoundError):
        tether.read_log("/nonexistent/capture.log")
    with pytest.raises(ValueError):
        tether.read_log(12)  # type: ignore[arg-type]


def test_conversions_keep_every_column() -> None:
    table = tether.read_log(DATA / "candump-forms.log")
    expected = rows(table)

    arrow = table.to_arrow()
    assert arrow.num_rows == len(table)
    got = arrow.to_pylist()
    assert [r["data"].hex().upper() for r in got] == [r["data"] for r in expected]
    assert [r["channel"] for r in got] == [r["channel"] for r in expected]
    assert [r["direction"] for r in got] == [r["dir"] or "unknown" for r in expected]
    assert [r["id"] for r in got] == [r["id"] for r in expected]

    df = table.to_pandas()
    assert list(df.columns) == arrow.column_names
    assert df["channel"].tolist() == [r["channel"] for r in expected]
    assert [d.hex().upper() for d in df["data"]] == [r["data"] for r in expected]
    assert df["ts_ns"].dtype == np.int64 and df["fd"].tolist() == [r["fd"] for r in expected]

    pl = table.to_polars()
    assert pl.columns == arrow.column_names
    assert pl["channel"].to_list() == [r["channel"] for r in expected]
    assert [d.hex().upper() for d in pl["data"].to_list()] == [r["data"] for r in expected]
    assert pl["direction"].to_list() == [r["dir"] or "unknown" for r in expected]


@pytest.mark.parametrize(
    "method, package", [("to_arrow", "pyarrow"), ("to_pandas", "pandas"), ("to_polars", "polars")]
)
def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, method: str, package: str) -> None:
    table = tether.read_log(DATA / "candump-forms.log")
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(ImportError, match=f"needs the '{package}' package"):
        getattr(table, method)()
