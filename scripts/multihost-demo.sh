#!/bin/sh
# Three hosts on one machine, as network namespaces: one topology, each host's devices run by
# `procdevices up --host NAME` inside its namespace (docs/multihost.md). Needs root and
# iproute2. Everything it makes lives under a private prefix and is removed on exit (Ctrl-C
# included); the 10.77.0.0/24 addresses exist inside the namespaces only.
#
#   sudo sh scripts/multihost-demo.sh            # run it, show status --all, a request, stop
#   sudo PYTHON=.venv/bin/python sh scripts/multihost-demo.sh
#   sudo sh scripts/multihost-demo.sh --keep     # leave it running until Enter, to play:
#       ip netns exec pdemoa env PROCDEVICES_HOST=a PROCDEVICES_RUN_DIR=$DIR/run-a \
#           python -m procdevices status --all -c $DIR/topology.toml
set -eu

PYTHON=${PYTHON:-python3}
KEEP=${1:-}
P=pdemo
DIR=$(mktemp -d /tmp/pdemo-XXXXXX)
HOSTS="a b c"
PIDS=""

cleanup() {
    for pid in $PIDS; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in $PIDS; do wait "$pid" 2>/dev/null || true; done
    for h in $HOSTS; do ip netns del "$P$h" 2>/dev/null || true; done
    ip netns del "${P}sw" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

ip netns add "${P}sw"
ip -n "${P}sw" link set lo up
ip -n "${P}sw" link add br0 type bridge
ip -n "${P}sw" link set br0 up
i=1
for h in $HOSTS; do
    ip netns add "$P$h"
    ip -n "$P$h" link set lo up
    ip link add "v-$h" netns "${P}sw" type veth peer name eth0 netns "$P$h"
    ip -n "${P}sw" link set "v-$h" master br0 up
    ip -n "$P$h" addr add "10.77.0.$i/24" dev eth0
    ip -n "$P$h" link set eth0 up
    i=$((i + 1))
done

cat > "$DIR/topology.toml" <<TOML
[cluster]
keys = "keys"

[hosts.a]
address = "10.77.0.1"
control = "tcp://10.77.0.1:7100"

[hosts.b]
address = "10.77.0.2"
control = "tcp://10.77.0.2:7100"

[hosts.c]
address = "10.77.0.3"
control = "tcp://10.77.0.3:7100"

[devices.broker]          # clients on any host: REQ to @broker.in
host = "b"
kind = "queue"
in = { bind = ["tcp://*:5559"] }
out = { bind = ["tcp://*:5560"] }

[devices.feed]            # a's producers PUSH here; it forwards to c
host = "a"
kind = "streamer"
in = { bind = ["tcp://*:5570"] }
out = { connect = ["@sink.in"] }

[devices.sink]
host = "c"
kind = "streamer"
in = { bind = ["tcp://*:5571"] }
out = { bind = ["tcp://*:5572"] }
TOML

cd "$DIR"
"$PYTHON" -m procdevices keys generate keys >/dev/null
"$PYTHON" -m procdevices endpoints -c topology.toml
for h in $HOSTS; do
    ip netns exec "$P$h" "$PYTHON" -m procdevices up -c topology.toml --host "$h" --run-dir "run-$h" \
        2>"up-$h.log" &
    PIDS="$PIDS $!"
done

as_a() { ip netns exec "${P}a" env PROCDEVICES_HOST=a PROCDEVICES_RUN_DIR="$DIR/run-a" "$@"; }
# Wait for all three (status --all exits 0 once every host answers and none is FATAL).
tries=0
until as_a "$PYTHON" -m procdevices status --all -c topology.toml --timeout 1 >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "the hosts did not come up; see $DIR/up-*.log" >&2; exit 1; }
    sleep 0.5
done
as_a "$PYTHON" -m procdevices status --all -c topology.toml

# A worker on c, a request from a, through the broker on b.
ip netns exec "${P}c" "$PYTHON" -c '
import zmq; s = zmq.Context().socket(zmq.REP); s.connect("tcp://10.77.0.2:5560"); s.send(b"pong from c " + s.recv())' &
PIDS="$PIDS $!"
ip netns exec "${P}a" "$PYTHON" -c '
import zmq; s = zmq.Context().socket(zmq.REQ); s.connect("tcp://10.77.0.2:5559"); s.send(b"(ping from a)")
print(s.recv().decode() if s.poll(10000) else "no answer")'

if [ "$KEEP" = "--keep" ]; then
    echo "running in $DIR (namespaces ${P}a ${P}b ${P}c); Enter stops everything"
    read -r _
fi
