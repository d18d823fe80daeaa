"""Benchmark procdevices against pyzmq's zmq.devices, side by side, in one run.

    python scripts/bench.py              # full run (~6-10 min on 2 cores)
    python scripts/bench.py --quick      # < 2 min: fewer reps, messages and kills, 8 devices
    python scripts/bench.py --json out.json --reps 7
    python scripts/bench.py --only startup --scale 256   # start-up, then 256 devices under one up
    python scripts/bench.py --quick --only tap           # the supervised streamer with and without a tap

What is measured (docs/performance.md explains each figure and the targets):

  throughput  64 B and 4 KiB PUSH -> PULL messages over ipc and tcp through: no device (the
              ceiling), pyzmq's zmq.devices.ProcessDevice (forks: the global start method, as
              pyzmq does), procdevices.ProcessDevice (spawn), and a device under the
              supervisor (`python -m procdevices up`). Sender and receiver are spawned
              processes; a warm-up precedes the timed part; the receiver counts and times
              from its first to its last timed message. Case order rotates every repetition;
              every device case is also a ratio to pyzmq's in the same repetition.
  latency     REQ -> ROUTER/DEALER queue -> REP echo, round trips interleaved in blocks over
              pyzmq's ProcessDevice, procdevices' ProcessDevice and a supervised queue.
  mq          the same for a monitored queue (PUB monitor): pyzmq's ProcessMonitoredQueue
              (pyzmq's C loop, no control) against procdevices' (its steerable loop: C when
              built, else Python; PROCDEVICES_MQ_LOOP=python forces Python; the report says).
  startup     time until 1, 8, 32 devices all forward a message; memory (RSS, USS, PSS) per
              device process; pyzmq's ProcessDevice with fork and with spawn (the like-for-like
              base for procdevices' spawned devices), and `up` with spawn and forkserver.
  scale       (--scale N) N devices as 4 x N/4 replicas over ipc under one `up`, with spawn and
              with forkserver: time to all RUNNING, idle supervisor CPU, `down` time.
  restart     SIGKILL a supervised streamer that binds over ipc: time until the replacement
              answers PING on its control socket, and until a message is forwarded again;
              connects refused meanwhile; own_sockets true (the default) and false run
              alternately, 3 runs of 10 kills each; then once with pool_size 0.
  stop        SIGTERM to `up` until it exits, with its log checked for clean stops.
  overhead    CPU of the idle supervisor (and of its idle devices) with 32 devices.

Only stdlib, pyzmq, psutil and procdevices. Every case cleans up in `finally`; a failing
case is reported and the run goes on.
"""
