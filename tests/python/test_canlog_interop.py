"""CAN log interop: python-can reads what `tether can convert` writes and sees the same frames,
and `tether can stats` / `convert` agree with python-can on the shared captures.

Needs TETHER_BIN (the built `tether` binary); scripts/test.sh sets it.
"""

import collections
import json
import os
import re
import subprocess
from pathlib import Path

import can
import pytest

# shared/ sits beside the repository (CI); TETHER_SHARED_DATA points elsewhere (a git worktree).
DATA = Path(os.environ.get("TETHER_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "can"))
CANDUMP_CAPTURES = ["savvycan-candump.log", "nissan-leaf-isotp.log"]
ASC_SAMPLES = ["test_CanMessage.asc", "test_CanFdMessage.asc", "test_CanFdMessage64.asc", "test_CanRemoteMessage.asc"]


@pytest.fixture(scope="module")
def tether():
    binary = os.environ.get("TETHER_BIN")
    assert binary, "TETHER_BIN must point at the built tether binary"
    assert Path(binary).exists(), binary
    return binary


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    # ASC header dates are UTC; python-can reads them in local time.
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()


def run(tether, *args, check=True):
    proc = subprocess.run([tether, "can", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def channel_index(channel):
    if isinstance(channel, int):
        return channel
    match = re.search(r"(\d+)$", str(channel))
    return int(match.group(1)) if match else 0


def view(msg, channel_as_index=False):
    """What both sides must agree on, with microsecond timestamps."""
    return (
        f"{msg.timestamp:.6f}",
        channel_index(msg.channel) if channel_as_index else msg.channel,
        msg.arbitration_id,
        msg.is_extended_id,
        msg.is_remote_frame,
        msg.is_error_frame,
        msg.is_fd,
        msg.bitrate_switch,
        msg.error_state_indicator,
        msg.dlc,
        bytes(msg.data).hex().upper(),
        msg.is_rx,
    )


@pytest.mark.parametrize("name", CANDUMP_CAPTURES)
def test_candump_output_reads_the_same_in_python_can(tether, tmp_path, name):
    src = DATA / name
    out = tmp_path / "out.log"
    run(tether, "convert", src, "--to", "candump", "-o", out)
    assert out.read_bytes() == src.read_bytes()
    ours = [view(m) for m in can.LogReader(str(out))]
    theirs = [view(m) for m in can.LogReader(str(src))]
    assert len(ours) > 1000
    assert ours == theirs


@pytest.mark.parametrize("name", CANDUMP_CAPTURES)
def test_asc_output_reads_the_same_in_python_can(tether, tmp_path, name):
    src = DATA / name
    out = tmp_path / "out.asc"
    run(tether, "convert", src, "--to", "asc", "-o", out)
    ours = [view(m, True) for m in can.ASCReader(str(out), relative_timestamp=False)]
    theirs = [view(m, True) for m in can.LogReader(str(src))]
    assert len(ours) == len(theirs)
    assert ours == theirs


@pytest.mark.parametrize("name", ASC_SAMPLES)
def test_asc_samples_survive_candump_and_asc(tether, tmp_path, name):
    src = DATA / "python-can-asc" / name
    theirs = [view(m, True) for m in can.ASCReader(str(src), relative_timestamp=False)]
    # ASC → ASC: python-can reads our ASC like the original.
    asc_out = tmp_path / "out.asc"
    run(tether, "convert", src, "--to", "asc", "-o", asc_out)
    ours = [view(m, True) for m in can.ASCReader(str(asc_out), relative_timestamp=False)]
    assert ours == theirs
    # ASC → candump: python-can's candump reader sees the same frames (FD flag aside for
    # remote frames on CANFD lines, which CAN FD cannot carry).
    log_out = tmp_path / "out.log"
    run(tether, "convert", src, "--to", "candump", "-o", log_out)
    via_log = [view(m, True) for m in can.LogReader(str(log_out))]

    def no_fd_remote(v):
        return v[:6] + ((v[6] and not v[4]),) + v[7:]

    assert [no_fd_remote(v) for v in via_log] == [no_fd_remote(v) for v in theirs]


@pytest.mark.parametrize("name", CANDUMP_CAPTURES)
def test_jsonl_matches_python_can(tether, name):
    src = DATA / name
    proc = run(tether, "convert", src, "--to", "jsonl")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    msgs = list(can.LogReader(str(src)))
    assert len(rows) == len(msgs)
    for row, msg in zip(rows, msgs):
        assert list(row) == ["ts_ns", "channel", "id", "extended", "remote", "error", "fd", "brs", "esi", "len", "data", "dir"]
        assert f"{row['ts_ns'] / 1e9:.6f}" == f"{msg.timestamp:.6f}"
        assert row["channel"] == msg.channel
        assert row["id"] == msg.arbitration_id
        assert row["extended"] == msg.is_extended_id
        assert row["remote"] == msg.is_remote_frame
        assert row["len"] == msg.dlc
        assert row["data"] == bytes(msg.data).hex().upper()
        assert (row["dir"] != "tx") == msg.is_rx


@pytest.mark.parametrize("name", CANDUMP_CAPTURES)
def test_stats_agree_with_python_can(tether, name):
    src = DATA / name
    stats = json.loads(run(tether, "stats", src, "--json").stdout)
    msgs = list(can.LogReader(str(src)))
    assert stats["frames"] == len(msgs)
    assert stats["skipped_lines"] == 0
    counts = collections.Counter(
        f"{m.arbitration_id:08X}" if m.is_extended_id else f"{m.arbitration_id:03X}" for m in msgs
    )
    assert stats["per_id"] == dict(counts)
    assert stats["ids"] == len(counts)
    first, last = min(m.timestamp for m in msgs), max(m.timestamp for m in msgs)
    assert abs(stats["duration_ns"] / 1e9 - (last - first)) < 1e-5


def test_stats_text_names_the_counts(tether):
    out = run(tether, "stats", DATA / "candump-forms.log").stdout
    assert re.search(r"^frames:\s+12 \(data 7, remote 2, fd 2, error 1\)$", out, re.M)
    assert re.search(r"^skipped lines:\s+0$", out, re.M)
    assert re.search(r"^drops:\s+1 notices, 3 frames$", out, re.M)
    assert re.search(r"^\s+7E8\s+2$", out, re.M)


def test_bad_lines_warn_and_strict_stops(tether, tmp_path):
    src = tmp_path / "bad.log"
    src.write_text(
        "(1.000000) can0 123#00\n"
        "(1.000001) can0 800#00\n"
        "not a frame\n"
        "(1.000002) can0 124#01\n"
    )
    out = tmp_path / "out.log"
    proc = run(tether, "convert", src, "--to", "candump", "-o", out)
    warnings = [l for l in proc.stderr.splitlines() if l.startswith(f"{src}:")]
    assert warnings[0].startswith(f"{src}:2: ")
    assert warnings[1].startswith(f"{src}:3: ")
    assert "skipped 2 bad lines" in proc.stderr
    assert out.read_text() == "(1.000000) can0 123#00\n(1.000002) can0 124#01\n"

    strict = run(tether, "convert", src, "--to", "candump", "-o", out, "--strict", check=False)
    assert strict.returncode == 1
    assert f"{src}:2: " in strict.stderr
    assert out.read_text() == "(1.000000) can0 123#00\n"

    stats = json.loads(run(tether, "stats", src, "--json").stdout)
    assert stats["frames"] == 2 and stats["skipped_lines"] == 2


def event_bodies(path):
    """ASC event lines without their timestamp (the header dates differ by design)."""
    lines = Path(path).read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.lower().startswith("begin triggerblock"))
    return [l.split(None, 1)[1] for l in lines[start + 1 :] if l and not l.startswith("End")]


@pytest.mark.parametrize(
    "name", ["savvycan-candump.log", "nissan-leaf-isotp.log", "python-can-asc/test_CanFdMessage64.asc"]
)
def test_asc_lines_are_what_python_can_writes(tether, tmp_path, name):
    src = DATA / name
    ours = tmp_path / "ours.asc"
    run(tether, "convert", src, "--to", "asc", "-o", ours)
    theirs = tmp_path / "theirs.asc"
    reader = can.ASCReader(str(src)) if name.endswith(".asc") else can.LogReader(str(src))
    with can.ASCWriter(str(theirs)) as writer:
        for msg in reader:
            if isinstance(msg.channel, int):
                msg.channel = f"can{msg.channel}"
            writer.on_message_received(msg)
    assert event_bodies(ours) == event_bodies(theirs)
