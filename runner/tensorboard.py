"""TensorBoard event files from a host's metrics.jsonl and telemetry.jsonl, written without TensorFlow.

An event file is a TFRecord stream (length, masked CRC-32C, bytes, masked CRC-32C) of `Event` protobufs; we
encode the few fields TensorBoard reads for scalars by hand, so neither the laptop nor a host needs protobuf.
Tags: train/loss, train/lr, train/tokens_per_s, train/epoch and eval/loss by training step; per GPU
(gpu<N>, in the session's GPU order) power_w (instant), power_avg_w (1 s average), limit_w, temperature_c,
memory_used_mib and utilization_pct by seconds since the first telemetry sample.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from runner.host import session_files as files
from runner.train.metrics import read_jsonl

FOLDER = "tensorboard"  # <run folder>/<host>/tensorboard: one TensorBoard run per host of a session
PREFIX = "events.out.tfevents."
FILE_VERSION = b"brain.Event:2"
STEP_TAGS = {"loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s", "epoch": "train/epoch"}
GPU_TAGS = {
    "power_avg_w": "power_w",
    "limit_w": "limit_w",
    "temperature_c": "temperature_c",
    "memory_used_mib": "memory_used_mib",
    "utilization_pct": "utilization_pct",
}  # tag -> telemetry field

Scalar = tuple[float, int, dict[str, float]]  # wall time, step, tag -> value


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """TFRecord's CRC: rotated and offset, so a CRC of data that holds CRCs is not itself a weak CRC."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data  # wire type 2: length-delimited


def event(
    wall_time: float, step: int = 0, values: dict[str, float] | None = None, file_version: bytes | None = None
) -> bytes:
    """An Event protobuf: wall_time (1, double), step (2, int64), file_version (3) or summary (5) of values
    (Summary.value (1): tag (1), simple_value (2, float))."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version)
    if values:
        summary = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
            for tag, value in values.items()
        )
        out += _field_bytes(5, summary)
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_scalars(records: Iterable[dict]) -> list[Scalar]:
    """Training steps and eval results by training step. A resumed trainer starts again after its checkpoint's
    step: what the earlier try logged beyond it is dropped, as the resumed run redoes those steps."""
    kept: list[Scalar] = []
    for item in records:
        step, wall = item.get("step"), item.get("time", 0.0)
        if item.get("event") == "start" and isinstance(item.get("start_step"), int):
            kept = [s for s in kept if s[1] <= item["start_step"]]
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if item.get("event") == "eval" and _number(item.get("eval_loss")):
            kept.append((wall, step, {"eval/loss": item["eval_loss"]}))
        elif "event" not in item:
            values = {tag: item[key] for key, tag in STEP_TAGS.items() if _number(item.get(key))}
            if values:
                kept.append((wall, step, values))
    return kept


def telemetry_scalars(samples: Iterable[dict]) -> Iterator[Scalar]:
    """Each GPU's readings, by whole seconds since the first sample (a repeated second is skipped)."""
    order: dict[str, int] = {}
    start, last_step = None, -1
    for sample in samples:
        wall = sample.get("time")
        if not _number(wall):
            continue
        start = wall if start is None else start
        step = round(wall - start)
        if step <= last_step:
            continue
        last_step = step
        values = {}
        for gpu in sample.get("gpus") or []:
            index = order.setdefault(gpu.get("uuid"), len(order))
            instant = gpu.get("instant_power_w")
            reading = {
                "power_w": instant if _number(instant) else gpu.get("power_w"),
                **{tag: gpu.get(field) for tag, field in GPU_TAGS.items()},
            }
            values.update({f"gpu{index}/{tag}": v for tag, v in reading.items() if _number(v)})
        if values:
            yield wall, step, values


def write_events(host_dir: Path, host: str) -> Path | None:
    """Write host_dir/tensorboard/events.out.tfevents.<start>.<host> from the fetched metrics.jsonl and
    telemetry.jsonl, replacing an earlier conversion; None when neither holds a value."""
    scalars = sorted(
        [*metric_scalars(read_jsonl(host_dir / files.METRICS)),
         *telemetry_scalars(read_jsonl(host_dir / files.TELEMETRY))],
        key=lambda s: s[0],
    )
    if not scalars:
        return None
    folder = host_dir / FOLDER
    folder.mkdir(exist_ok=True)
    start = scalars[0][0]
    path = folder / f"{PREFIX}{int(start)}.{host}"
    # Two commands may convert the same run at once (`runner stop` while `runner train` fetches): each writes its
    # own temporary file, and an earlier file the other already removed is no error (CI: FileNotFoundError)
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    with tmp.open("wb") as out:
        out.write(record(event(start, file_version=FILE_VERSION)))
        for wall, step, values in scalars:
            out.write(record(event(wall, step, values)))
    for old in folder.glob(f"{PREFIX}*"):  # one file per run: TensorBoard would read a second as more data
        if old != path:
            old.unlink(missing_ok=True)
    tmp.replace(path)
    return path
