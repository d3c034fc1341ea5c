# Shared helpers of the benchmark scripts: `. "$ROOT/benches/lib.sh"` after
# ROOT is set. Nothing here runs on its own.

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tandem-target}

# Install what the build needs and build `tandem` (PROFILE=release, the
# default, or anything else for a debug build); sets T to the binary.
# With TANDEM set (benches/report.sh builds once), that binary is used.
build_tandem() {
  if [ -n "${TANDEM:-}" ]; then T=$TANDEM; return; fi
  bash "$ROOT/.ci/setup"
  if [ "${PROFILE:-release}" = release ]; then
    cargo build --release --bin tandem --manifest-path "$ROOT/Cargo.toml"
    T=$CARGO_TARGET_DIR/release/tandem
  else
    cargo build --bin tandem --manifest-path "$ROOT/Cargo.toml"
    T=$CARGO_TARGET_DIR/debug/tandem
  fi
}

# A free loopback port: UDP (for the mirror) or TCP.
udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# node_conf DIR ID [LMTP_PORT] [IMAP_PORT] [ADMIN_PORT]: DIR/tandem.toml
# for a node on loopback (port 0 or none: the kernel picks). NODE_EXTRA and
# IMAP_EXTRA, if set, are more lines for the [node] and [imap] sections.
node_conf() {
  mkdir -p "$1"
  cat > "$1/tandem.toml" <<TOML
[node]
id = "$2"
data_dir = "$1/data"
${NODE_EXTRA:-}
[imap]
listen = "127.0.0.1:${4:-0}"
tls_listen = "127.0.0.1:0"
${IMAP_EXTRA:-}
[lmtp]
listen = "127.0.0.1:${3:-0}"
[admin]
listen = "127.0.0.1:${5:-0}"
TOML
}

# mirror_conf DIR ID MIRROR_PORT PEER_PORT [LMTP_PORT] [IMAP_PORT]: the same
# for one side of a mirrored pair.
mirror_conf() {
  node_conf "$1" "$2" "${5:-0}" "${6:-0}"
  cat >> "$1/tandem.toml" <<TOML
[mirror]
listen = "127.0.0.1:$3"
peers = ["127.0.0.1:$4"]
secret = "benchmark shared secret"
reconnect_min_ms = 20
reconnect_max_ms = 200
TOML
}

# Start the node of DIR in the background (log in DIR/serve.log); prints its pid.
start_node() { "$T" --config "$1/tandem.toml" serve > "$1/serve.log" 2>&1 & echo $!; }

# Stop the node with PID (SIGTERM) and wait until it is gone.
stop_node() {
  kill -TERM "$1" 2>/dev/null || true
  while kill -0 "$1" 2>/dev/null; do sleep 0.05; done
}

# Wait until the node of DIR listens (at most 20 s).
wait_up() {
  for _ in $(seq 400); do grep -q "lmtp listening" "$1/serve.log" 2>/dev/null && return; sleep 0.05; done
  echo "node in $1 did not start" >&2
  exit 1
}

# The version vector of the node of DIR, as sorted JSON.
heads() { "$T" --config "$1/tandem.toml" status --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["log"]["heads"], sort_keys=True))'; }
