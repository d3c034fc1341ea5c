//! The daemon's sans-io decoders, compiled here from their own source files.
//!
//! The `tandem` crate links RocksDB; building it with the fuzzer's coverage
//! instrumentation would compile RocksDB again for every sanitizer setting.
//! The modules below depend on nothing of the daemon (`.ci/run` checks that
//! `src/proto` and `src/repl/frame.rs` import neither tokio nor the log), so
//! they are compiled straight from `src/` — the fuzzed code is the shipped code.
#![allow(dead_code)]

#[path = "../../src/proto/mod.rs"]
pub mod proto;

#[path = "../../src/repl/frame.rs"]
pub mod frame;

#[path = "../../src/repl/engine/vector.rs"]
pub mod vector;

/// What `frame.rs` takes from the link's engine: its version vector.
pub mod engine {
    pub use super::vector::Vector;
}

#[path = "../../src/event.rs"]
pub mod event;
