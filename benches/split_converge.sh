#!/usr/bin/env bash
# Convergence after a network cut heals, against the number of conflicting
# messages: a master and a slave on loopback, each dialling the other
# through a UDP relay that is cut; N deliveries per side into INBOX during
# the cut (N colliding UIDs), then the heal. Prints per N: the messages the
# master moved, when the links were up again, when both nodes held the same
# digest with nothing marked or kept aside, and the renumbering rate.
#   COUNTS="10 1000 10000" PROFILE=debug benches/split_converge.sh
# PROFILE is release (default), debug or devopt (benches/devopt.sh);
# CONNS LMTP connections per node (default 4); with RESULTS=FILE each
# row is also appended to FILE as one JSON line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/lib.sh"
. "$ROOT/benches/devopt.sh"
PROFILE=${PROFILE:-release}
if [ -n "${TANDEM:-}" ]; then T=$TANDEM; else build_bench_bins ""; fi
OUT=$(mktemp -d /tmp/split-converge.XXXXXX)
echo "binary: $T ($PROFILE)"
T=$T OUT=$OUT COUNTS=${COUNTS:-10 1000} python3 "$ROOT/benches/split_converge.py"
echo "raw logs: $OUT"
