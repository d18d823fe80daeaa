"""The steerable forwarding loop in C (_mqloop.c); see cloop.py and monitoredqueuedevice.py."""

from array import array

def bind(path: str, /) -> tuple[str, tuple[int, int, int]]: ...
def run(
    in_handle: int,
    out_handle: int,
    mon_handle: int,
    ctrl_handle: int,
    in_prefix: bytes,
    out_prefix: bytes,
    swap_ids: bool,
    batch: int,
    counters: array[int],
    check_signals: bool,
    raw_capture: bool = False,
    poll_out: bool = True,
    /,
) -> int: ...
