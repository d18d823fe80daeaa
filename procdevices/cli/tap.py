"""``procdevices tap NAME``: print the messages passing through a running device instance.

The reading, filtering and counting are procdevices/tap.py's; this module parses the options,
formats each message (text, hex, jsonl, raw) and prints the trailer on Ctrl-C or at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import TextIO

from procdevices import exitcodes
from procdevices.cli import client
from procdevices.tapreader import SIDES, NoSupervisor, Tap, TapError, TapMessage

FORMATS = ("text", "hex", "jsonl", "raw")
DEFAULT_SNAPLEN = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--side", choices=SIDES, default="both", help="messages received on in, out, or both")
    parser.add_argument("--format", choices=FORMATS, default="text", help="text (default), hex, jsonl, raw")
    parser.add_argument("-n", dest="count", type=_positive, default=None, metavar="COUNT", help="stop after COUNT")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS", help="stop after SECONDS")
    parser.add_argument("--prefix", default=None, metavar="BYTES", help="only messages whose first frame starts so")
    parser.add_argument("--grep", default=None, metavar="REGEX", help="only messages with a frame matching REGEX")
    parser.add_argument(
        "--snaplen", type=_positive, default=DEFAULT_SNAPLEN, metavar="N", help="show at most N bytes of each frame"
    )
    parser.add_argument("--sample", type=_positive, default=None, metavar="N", help="show every Nth matching message")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    _refuse_remote(args)
    notes = sys.stderr

    def note(text: str) -> None:
        print(f"procdevices: tap: {text}", file=notes, flush=True)

    try:
        tapped = Tap(
            args.name,
            client.run_dir(args),
            side=args.side,
            count=args.count,
            duration=args.duration,
            prefix=args.prefix.encode() if args.prefix else None,
            grep=args.grep,
            sample=args.sample,
            on_note=note,
        )
    except TapError as e:
        print(f"procdevices: tap: {e}", file=sys.stderr)
        return exitcodes.EXIT_NOT_RUNNING if isinstance(e, NoSupervisor) else exitcodes.EXIT_FAILED
    except re.error as e:
        print(f"procdevices: tap: --grep: {e}", file=sys.stderr)
        return exitcodes.EXIT_FAILED
    if tapped.tap["directions"] == "unknown" and args.side != "both":
        note(
            f"{args.name}'s copy carries no direction (libzmq's capture): every message shows as '?', --side drops all"
        )
    try:
        with tapped:
            for message in tapped:
                _print(message, args.format, args.snaplen, sys.stdout)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        return exitcodes.EXIT_OK
    note(tapped.trailer())
    return exitcodes.EXIT_OK


def _refuse_remote(args: argparse.Namespace) -> None:
    """The tap endpoint is owner-only on the device's own host: a device of another host is
    not tapped over the network (that would put its payloads on the wire)."""
    from procdevices.cli.cluster import _remote_target

    target = _remote_target(args, args.name)
    if target is not None:
        raise client._fail(
            f"tap: {args.name} runs on host {target.name}; a tap is read only on the device's own host "
            f"(run `procdevices tap {args.name}` there)",
            exitcodes.EXIT_FAILED,
        )


def _print(message: TapMessage, fmt: str, snaplen: int, out: TextIO) -> None:
    if fmt == "jsonl":
        out.write(json.dumps(message.as_json(snaplen)) + "\n")
    elif fmt == "raw":
        # Frames for another program: each frame's bytes, then a newline; a blank line between messages.
        buffer = out.buffer if hasattr(out, "buffer") else None
        if buffer is not None:
            buffer.write(b"".join(f + b"\n" for f in message.frames) + b"\n")
            buffer.flush()
            return
    elif fmt == "hex":
        out.write(_header(message) + "\n")
        for i, frame in enumerate(message.frames):
            out.write(f"  frame {i} ({len(frame)} bytes)\n")
            out.write("".join(f"    {line}\n" for line in hexdump(frame[:snaplen])))
    else:
        frames = " | ".join(_escaped(f, snaplen) for f in message.frames)
        out.write(f"{_header(message)} {frames}\n")
    out.flush()


def _header(message: TapMessage) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(message.ts)) + f".{int(message.ts * 1000) % 1000:03d}"
    return f"{stamp} {message.device} {message.dir:<3} #{message.seq}"


def _escaped(frame: bytes, snaplen: int) -> str:
    text = repr(frame[:snaplen])[2:-1]
    return text + (f"...(+{len(frame) - snaplen})" if len(frame) > snaplen else "")


def hexdump(data: bytes) -> list[str]:
    """16 bytes a line: offset, hex, ASCII."""
    lines = []
    for at in range(0, len(data), 16):
        chunk = data[at : at + 16]
        ascii_text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{at:04x}  {chunk.hex(' '):<47}  {ascii_text}")
    return lines
