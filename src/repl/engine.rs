//! The replication link as deterministic state machines: no socket, no
//! clock, no store, no task. The driver (`super::quic`) feeds each machine
//! what happened (frames that arrived, entries it read, batches the store
//! applied, local commits) and carries out the steps it returns, so every
//! decision of the protocol (what to send, in which order, what to refuse,
//! when to acknowledge) is here and testable by the steps it emits.
//!
//! - [`handshake`]: the proof of the shared secret, the dialer's `Hello`
//!   and the acceptor's answer, and the opening's deadline.
//!
//! Machines with deadlines follow quinn-proto's shape: the driver passes
//! `now` in, sets a timer for `poll_timeout()` and calls
//! `handle_timeout(now)` when it fires; what that returns (the link ends,
//! and why) is the command. No machine reads a clock, so a simulation runs
//! them on a virtual one.
//! - [`sender`]: which entries go out, in batches under a window.
//! - [`dialer`]: the outgoing link around the sender: the peer's vector,
//!   acknowledgements and this node's confirmed position, which bodies
//!   travel with a batch and which are asked about first, and the body
//!   queries' deadlines.
//! - [`receiver`]: the incoming link: checks on arrival, chunked bodies,
//!   the query budget, batches to the writer in order and under a bound,
//!   acknowledgements once durable.
//! - [`backoff`]: when a failed outgoing link tries again.
//! - [`vector`]: the version vector every part of the link speaks.
//! - [`authority`]: whether a slave reaches its master (UID authority).

pub mod authority;
pub mod backoff;
pub mod dialer;
pub mod handshake;
pub mod receiver;
pub mod sender;
pub mod vector;

pub use sender::{Command, Item, Resume, Sender, Window};
pub use vector::Vector;
