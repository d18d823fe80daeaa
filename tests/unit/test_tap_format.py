"""The tap's pure parts: direction from a copy's prefix, and the text/hex/jsonl renderings."""

from __future__ import annotations

import base64
import io
import json

from procdevices.cli.tap import _escaped, _print, hexdump
from procdevices.tapreader import TapMessage, direction_of, frame_json

MQ = {"directions": "prefixed", "in_prefix": b"in".hex(), "out_prefix": b"out".hex()}


def test_a_monitored_queue_copy_gives_its_direction_and_loses_its_prefix() -> None:
    assert direction_of(MQ, [b"in", b"id", b"", b"req"]) == ("in", [b"id", b"", b"req"])
    assert direction_of(MQ, [b"out", b"id", b"", b"rep"]) == ("out", [b"id", b"", b"rep"])
    same = {"directions": "prefixed", "in_prefix": "00", "out_prefix": "00"}
    assert direction_of(same, [b"\x00", b"x"]) == ("?", [b"x"])  # equal prefixes cannot tell


def test_capture_copies_are_in_for_one_way_devices_and_unknown_otherwise() -> None:
    assert direction_of({"directions": "in"}, [b"a"]) == ("in", [b"a"])
    assert direction_of({"directions": "unknown"}, [b"in", b"a"]) == ("?", [b"in", b"a"])


def test_frame_json_is_text_when_utf8_else_base64_cut_at_snaplen() -> None:
    assert frame_json(b"hello", 3) == {"len": 5, "text": "hel"}
    assert frame_json(b"\xff\x00\x01", None) == {"len": 3, "b64": base64.b64encode(b"\xff\x00\x01").decode()}


def test_text_format_escapes_and_marks_a_cut_frame() -> None:
    assert _escaped(b"a\nb\x00", 256) == "a\\nb\\x00"
    assert _escaped(b"abcdef", 4) == "abcd...(+2)"


def test_hexdump_has_offset_hex_and_ascii() -> None:
    lines = hexdump(bytes(range(60, 80)))
    assert lines[0].startswith("0000  3c 3d") and lines[0].endswith("<=>?@ABCDEFGHIJK")
    assert lines[1].startswith("0010  4c 4d 4e 4f") and lines[1].endswith("LMNO")


def test_jsonl_has_the_documented_fields() -> None:
    out = io.StringIO()
    _print(TapMessage(1.5, "dev.1", "in", 7, (b"topic", b"\xfe")), "jsonl", 2, out)
    assert json.loads(out.getvalue()) == {
        "ts": 1.5,
        "device": "dev.1",
        "dir": "in",
        "seq": 7,
        "frames": [{"len": 5, "text": "to"}, {"len": 1, "b64": "/g=="}],
    }
