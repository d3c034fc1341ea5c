# Sourced by benches that build their own binaries: build_bench_bins EXAMPLE
# [CARGO ARGS...] builds the tandem binary (and the example, if named) for
# $PROFILE and sets T and BIN_DIR.
#
#   release  the release profile (compiles RocksDB at -O3 the first time:
#            343 C++ files, about 15 min on 2 idle cores)
#   debug    the dev profile
#   devopt   the dev profile with tandem and wal at opt-level 3 and without
#            debug assertions or overflow checks; every dependency (RocksDB
#            included) is at opt-level 2 in the dev profile already, so this
#            reuses a debug build's dependencies and compiles only the two
#            crates. Line tables stay (debug = 1).
build_bench_bins() {
  local example=$1; shift
  local args=("$@")
  [ -n "$example" ] && args+=(--example "$example")
  case "$PROFILE" in
    release)
      cargo build --release --bin tandem "${args[@]}" --manifest-path "$ROOT/Cargo.toml"
      BIN_DIR=$CARGO_TARGET_DIR/release ;;
    debug)
      cargo build --bin tandem "${args[@]}" --manifest-path "$ROOT/Cargo.toml"
      BIN_DIR=$CARGO_TARGET_DIR/debug ;;
    devopt)
      local p
      for p in tandem wal; do
        args+=(--config "profile.dev.package.$p.opt-level=3" --config "profile.dev.package.$p.debug-assertions=false"
          --config "profile.dev.package.$p.overflow-checks=false")
      done
      cargo build --bin tandem "${args[@]}" --manifest-path "$ROOT/Cargo.toml"
      BIN_DIR=$CARGO_TARGET_DIR/debug ;;
    *) echo "PROFILE must be release, debug or devopt" >&2; exit 2 ;;
  esac
  T=$BIN_DIR/tandem
}
