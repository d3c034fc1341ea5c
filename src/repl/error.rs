//! Why a mirror link ended, as a type: the driver decides by variant (is
//! this a refusal? must the peer be told?), logs by [`LinkError::kind`],
//! and never formats a frame's contents into a message.

use super::frame::FrameError;

/// Longest piece of a peer's `Refused` reason kept in an error.
const REASON_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The bytes on the stream are not a frame (length, version, encoding).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The connection or stream failed while doing `during`.
    #[error("{during}: {reason}")]
    Transport { during: &'static str, reason: String },
    /// A deadline ran out.
    #[error("{0}")]
    Timeout(String),
    /// A frame that does not fit the exchange at this point.
    #[error("expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: &'static str },
    /// This node's acceptor: the peer's proof of the secret was wrong.
    #[error("refused a peer with a wrong shared secret")]
    WrongSecret,
    /// This node's dialer: the peer's proof of the secret was wrong.
    #[error("refused: the peer does not know the shared secret")]
    PeerUnproven,
    /// The peer sent `Refused`.
    #[error("refused by the peer: {0}")]
    RefusedByPeer(String),
    /// The peer's `Hello` is not acceptable.
    #[error("refused hello: {0}")]
    BadHello(&'static str),
    /// A batch carrying entries of this node's own origin.
    #[error("batch {id} refused: it carries entries of this node's own origin")]
    OwnOrigin { id: u64 },
    /// A batch over the receiver's bounds.
    #[error("batch {id} refused: {entries} entries, at most {limit} per batch")]
    BatchTooLarge { id: u64, entries: usize, limit: usize },
    /// A batch the store refused (chain, event, missing body).
    #[error("batch {id} refused: {reason}")]
    BatchRefused { id: u64, reason: String },
    /// `Chunk` frames that do not make up a body before its batch.
    #[error("chunked body refused: {0}")]
    BadChunk(&'static str),
    /// More `Query` frames than the link's budget, or one too large.
    #[error("query {id} refused: {why}")]
    QueryFlood { id: u64, why: &'static str },
    /// This node's history and the peer's disagree (a rollback or a fork,
    /// see `repl::history`): nothing is sent on this link.
    #[error("{0}")]
    Diverged(String),
    /// The peer lacks entries this node pruned: it cannot be caught up
    /// from this log, only joined by trees. Nothing is sent on this link.
    #[error(transparent)]
    BehindPruned(#[from] super::history::BehindPruned),
    /// The peer closed the link.
    #[error("link closed")]
    Closed,
    /// A failure on this node (store, task).
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

impl LinkError {
    /// A short stable name for logs and decisions.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Frame(_) => "bad-frame",
            LinkError::Transport { .. } => "transport",
            LinkError::Timeout(_) => "timeout",
            LinkError::Unexpected { .. } => "unexpected-frame",
            LinkError::WrongSecret => "wrong-secret",
            LinkError::PeerUnproven => "peer-unproven",
            LinkError::RefusedByPeer(_) => "refused-by-peer",
            LinkError::BadHello(_) => "bad-hello",
            LinkError::OwnOrigin { .. } => "own-origin",
            LinkError::Diverged(_) => "diverged",
            LinkError::BehindPruned(_) => "behind-pruned",
            LinkError::BatchTooLarge { .. } => "batch-too-large",
            LinkError::BatchRefused { .. } => "batch-refused",
            LinkError::QueryFlood { .. } => "query-flood",
            LinkError::BadChunk(_) => "bad-chunk",
            LinkError::Closed => "closed",
            LinkError::Local(_) => "local",
        }
    }

    /// The peer (or this node, of the peer) refused to go on: the dialer
    /// shows `refused` and logs it at most once a minute.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            LinkError::WrongSecret
                | LinkError::PeerUnproven
                | LinkError::RefusedByPeer(_)
                | LinkError::Diverged(_)
                | LinkError::BehindPruned(_)
        )
    }

    /// This node refuses what the peer sent after authentication: the
    /// peer is told with `Refused` and the refusal is counted on its link.
    pub fn refuses_peer(&self) -> bool {
        matches!(
            self,
            LinkError::OwnOrigin { .. }
                | LinkError::BatchTooLarge { .. }
                | LinkError::BatchRefused { .. }
                | LinkError::QueryFlood { .. }
                | LinkError::BadChunk(_)
                | LinkError::BadHello(_)
        )
    }

    pub(crate) fn transport(during: &'static str, e: impl std::fmt::Display) -> LinkError {
        LinkError::Transport {
            during,
            reason: e.to_string(),
        }
    }

    /// A peer's `Refused` reason, cut to a bounded length and without
    /// control characters.
    pub(crate) fn refused_by_peer(reason: &str) -> LinkError {
        let cut: String = reason
            .chars()
            .take(REASON_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        LinkError::RefusedByPeer(cut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_reason_is_bounded_and_refusals_are_typed() {
        let e = LinkError::refused_by_peer(&"x\n".repeat(10_000));
        let text = e.to_string();
        assert!(text.len() < 300 && !text.contains('\n'), "{text}");
        assert!(e.is_refusal() && !e.refuses_peer());
        assert!(LinkError::OwnOrigin { id: 1 }.refuses_peer());
        assert!(!LinkError::Closed.is_refusal());
        assert_eq!(LinkError::from(FrameError::Empty(0)).kind(), "bad-frame");
    }
}
