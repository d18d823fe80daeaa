"""Small topologies (``[devices.*]`` tables for ``support.cli.write_topology``) that many
tests share. Relative ipc paths resolve next to the topology file, in the test's own dir."""

# One streamer: producers PUSH to ipc://in.sock, consumers PULL from ipc://out.sock.
STREAMER = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://in.sock"] }
out = { bind = ["ipc://out.sock"] }
"""

# One streamer with its sockets named after it (pipe-in, pipe-out).
PIPELINE = """\
[devices.pipe]
kind = "streamer"
in = { bind = ["ipc://pipe-in"] }
out = { bind = ["ipc://pipe-out"] }
"""

# A queue and a streamer side by side: what one device's fault must not touch.
NEIGHBOURS = """\
[devices.broker]
kind = "queue"
in  = { bind = ["ipc://broker-in.sock"] }
out = { bind = ["ipc://broker-out.sock"] }

[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://pipe-in.sock"] }
out = { bind = ["ipc://pipe-out.sock"] }
"""
