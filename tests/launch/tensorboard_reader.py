"""Reads scalar summaries back from tensorboardX event files (for the tests), via tensorboardX's own protobufs
and its TFRecord framing: 8-byte length, 4-byte CRC, payload, 4-byte CRC."""

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def scalar_events(directory) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]}; a session restart that purges later steps is listed under "<purge>"."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12: offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                scalars.setdefault("<purge>", []).append((event.step, 0.0))
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
