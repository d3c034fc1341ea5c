//! Sans-io protocol cores: pure functions and state machines over bytes.
//! Nothing here imports tokio or the log; drivers live beside the store.

pub mod imap;
pub mod lmtp;
pub mod pop3;
