//! Replication frames on the wire: a 4-byte big-endian length, then the
//! postcard encoding of [`Frame`] with a leading protocol version byte.
//! Decoding is bounded and never panics; errors say where they failed.

use super::engine::Vector;
use serde::{Deserialize, Serialize};

/// Protocol version of the frames' encoding, the byte every frame carries
/// (2: body queries; 3: SPAKE2 authentication, bodies in chunks; 4: chain
/// hashes in the receiver's vector; 5: merkle resync frames). Version 6
/// of the link adds one frame, `Alive`, and version 7 the acceptor's own
/// `Hello`; both keep this byte: they are agreed by ALPN ([`ALPN`],
/// [`alive_allowed`], [`acceptor_introduces`]), and a node sends `Alive`
/// or its `Hello` as acceptor only on a link that agreed on them, so an
/// older node never receives a frame it does not expect.
pub const PROTOCOL: u8 = 5;
/// Largest frame accepted (a batch with its blobs).
pub const MAX_FRAME: u32 = 96 << 20;
/// Largest frame accepted before the peer has proved the shared secret:
/// the handshake's frames are a few dozen bytes, so whatever is larger is
/// refused on its length header, before its body is read.
pub const PREAUTH_FRAME: u32 = 4096;
/// Largest number of entries in one batch (a sender sends at most
/// `mirror.batch_entries`, which is bounded by this) and of hashes in one
/// query.
pub const MAX_BATCH_ENTRIES: usize = 4096;
/// Bodies larger than this travel as `Chunk` frames ahead of their batch,
/// so no body is ever limited by [`MAX_FRAME`].
pub const CHUNK_BYTES: usize = 16 << 20;
/// Largest `imap.max_literal` and `lmtp.max_message_size` a node starts
/// with (checked at startup).
pub const MAX_MESSAGE: u64 = 1 << 30;
/// Largest body a receiver puts together from chunks: [`MAX_MESSAGE`] and
/// room for the header lines LMTP adds when it stores a message.
pub const MAX_BODY: u64 = MAX_MESSAGE + (1 << 20);
/// The QUIC application protocol (ALPN) of the mirror: version 7, whose
/// acceptor answers the dialer's `Hello` with its own before `Vector`, and
/// which carries `Alive` frames.
pub const ALPN: &[u8] = b"tandem-mirror/7";
/// The ALPN of version 6 (`Alive`, but the acceptor does not introduce
/// itself), which nodes of version 6 speak.
pub const ALPN_V6: &[u8] = b"tandem-mirror/6";
/// The ALPN of version 5 (no `Alive`), which nodes of version 5 speak.
pub const ALPN_V5: &[u8] = b"tandem-mirror/5";
/// What a node offers and accepts, newest first: two nodes of this build
/// agree on 7, one of this build and an older one on the older one's.
pub const ALPNS: [&[u8]; 3] = [ALPN, ALPN_V6, ALPN_V5];

/// Whether a link that agreed on `alpn` may carry `Alive` frames.
pub fn alive_allowed(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ALPN) || alpn == Some(ALPN_V6)
}

/// Whether the acceptor of a link that agreed on `alpn` answers the
/// dialer's `Hello` with its own, so that the dialer learns whom it
/// reached whatever address it dialled (a host behind NAT, a relay).
pub fn acceptor_introduces(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ALPN)
}

/// One log entry as shipped. (`serde_bytes` keeps postcard's encoding of
/// a byte vector — a length and the bytes — but decodes it in one copy
/// instead of byte by byte.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub origin: u64,
    pub seq: u64,
    pub hlc: u64,
    pub hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A message body as shipped: its blake3 hash and its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBlob {
    pub hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Confirmation of the key agreed with `Pake`: keyed blake3 over the
    /// side and the TLS exporter.
    Auth { mac: [u8; 32] },
    /// The sender introduces itself.
    Hello {
        node_id: String,
        origin: u64,
        role: String,
        epoch: u64,
    },
    /// The receiver's durable version vector: where the sender starts. For
    /// the sender's own origin it is what the receiver was last seen to
    /// hold with the same hashes. `hashes`: the chain hash at each seq of
    /// `vector` (origins at seq 0 have none), so the sender can tell a fork.
    Vector { vector: Vector, hashes: Vec<(u64, [u8; 32])> },
    /// Entries in the sender's apply order, with the bodies they reference.
    Batch {
        id: u64,
        entries: Vec<WireEntry>,
        blobs: Vec<WireBlob>,
    },
    /// The receiver made batch `id` durable; its vector now.
    Ack { id: u64, vector: Vector },
    /// The peer refuses to go on.
    Refused { reason: String },
    /// Sender to receiver: which of these bodies do you hold? Asked for
    /// bodies this node holds other references to (the peer may have them
    /// already); the batch that needs them follows the answer.
    Query { id: u64, hashes: Vec<[u8; 32]> },
    /// Receiver to sender: the answer to query `id`, one flag per hash.
    Held { id: u64, held: Vec<bool> },
    /// A SPAKE2 message: the first frame of each side.
    Pake {
        #[serde(with = "serde_bytes")]
        msg: Vec<u8>,
    },
    /// Sender to receiver: the next piece of a body larger than
    /// [`CHUNK_BYTES`], of `total` bytes in all. The pieces of one body
    /// follow each other, and the batch that needs the body follows them.
    Chunk {
        hash: [u8; 32],
        total: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Opens a merkle resync exchange, in place of `Hello`: the connection
    /// then carries only the frames below (`replication.md` section 12).
    ResyncHello { node_id: String },
    /// Resync: read these keys of the answering node's views (`family` 0:
    /// merkle nodes and the records they name) or bodies (1: by hash), or
    /// (2, one empty key) its log heads, postcard `Vec<(origin, seq)>`.
    Read { id: u64, family: u8, keys: Vec<Vec<u8>> },
    /// Resync: the values of read `id`, one per key (`None`: absent).
    Values {
        id: u64,
        values: Vec<Option<serde_bytes::ByteBuf>>,
    },
    /// Dialer to acceptor, on links of version 6 only: a sign of life of
    /// the master `node` under `epoch`, sent by the master every 500 ms
    /// and passed on by every node (`replication.md` section 8b). `stamp`:
    /// the master's clock (HLC) when it sent it; `holds`: its version
    /// vector then. Nothing durable.
    Alive {
        node: String,
        epoch: u64,
        stamp: u64,
        holds: Vector,
    },
}

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {len} exceeds the {limit}-byte limit")]
    TooLarge { len: u32, limit: u32 },
    #[error("frame of {0} bytes is empty")]
    Empty(u32),
    #[error("protocol version {0}, this node speaks {PROTOCOL}")]
    Version(u8),
    #[error("frame body does not decode at byte {offset}: {reason}")]
    Body { offset: usize, reason: String },
}

/// A postcard flavor appending to a `Vec` whose room is reserved.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl Frame {
    /// The frame's name, for errors (never its contents).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Auth { .. } => "auth",
            Frame::Hello { .. } => "hello",
            Frame::Vector { .. } => "vector",
            Frame::Batch { .. } => "batch",
            Frame::Ack { .. } => "ack",
            Frame::Refused { .. } => "refused",
            Frame::Query { .. } => "query",
            Frame::Held { .. } => "held",
            Frame::Pake { .. } => "pake",
            Frame::Chunk { .. } => "chunk",
            Frame::ResyncHello { .. } => "resync-hello",
            Frame::Read { .. } => "read",
            Frame::Values { .. } => "values",
            Frame::Alive { .. } => "alive",
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Append the frame (length, version, body) to `out`. The body's size
    /// is counted first and room for it reserved, so the body is written
    /// once: a batch carries megabytes of bodies, which serialising into a
    /// growing buffer and copying it behind a header would copy and
    /// page-fault in several times over.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let n = postcard::experimental::serialized_size(self).expect("frames always serialise");
        out.reserve(n + 5);
        out.extend_from_slice(&((n + 1) as u32).to_be_bytes());
        out.push(PROTOCOL);
        let start = out.len();
        postcard::serialize_with_flavor(self, Append(out)).expect("frames always serialise");
        debug_assert_eq!(out.len() - start, n, "the counted size is the written size");
    }

    /// The length a frame header announces, checked against `limit`
    /// ([`MAX_FRAME`], or [`PREAUTH_FRAME`] before authentication).
    pub fn length(header: [u8; 4], limit: u32) -> Result<u32, FrameError> {
        let n = u32::from_be_bytes(header);
        if n > limit {
            return Err(FrameError::TooLarge { len: n, limit });
        }
        if n == 0 {
            return Err(FrameError::Empty(n));
        }
        Ok(n)
    }

    /// Decode a frame body (the bytes after the length).
    pub fn decode(body: &[u8]) -> Result<Frame, FrameError> {
        let Some((&v, rest)) = body.split_first() else {
            return Err(FrameError::Empty(0));
        };
        if v != PROTOCOL {
            return Err(FrameError::Version(v));
        }
        match postcard::take_from_bytes::<Frame>(rest) {
            Ok((f, [])) => Ok(f),
            Ok((_, extra)) => Err(FrameError::Body {
                offset: 1 + rest.len() - extra.len(),
                reason: "trailing bytes".into(),
            }),
            Err(e) => Err(FrameError::Body {
                offset: 1,
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let f = Frame::Batch {
            id: 7,
            entries: vec![WireEntry {
                origin: 1,
                seq: 2,
                hlc: 3,
                hash: [4; 32],
                payload: b"x".to_vec(),
            }],
            blobs: vec![WireBlob {
                hash: [9; 32],
                body: b"body".to_vec(),
            }],
        };
        let bytes = f.encode();
        let n = Frame::length(bytes[..4].try_into().unwrap(), MAX_FRAME).unwrap();
        // The byte-string encoding equals postcard's plain Vec<u8> encoding.
        let plain = postcard::to_allocvec(&(1u64, 2u64, 3u64, [4u8; 32], b"x".to_vec())).unwrap();
        let fast = postcard::to_allocvec(&WireEntry {
            origin: 1,
            seq: 2,
            hlc: 3,
            hash: [4; 32],
            payload: b"x".to_vec(),
        })
        .unwrap();
        assert_eq!(plain, fast);
        assert_eq!(n as usize, bytes.len() - 4);
        assert_eq!(Frame::decode(&bytes[4..]).unwrap(), f);
        assert_eq!(
            Frame::length((MAX_FRAME + 1).to_be_bytes(), MAX_FRAME),
            Err(FrameError::TooLarge {
                len: MAX_FRAME + 1,
                limit: MAX_FRAME
            })
        );
        assert_eq!(
            Frame::length((90u32 << 20).to_be_bytes(), PREAUTH_FRAME),
            Err(FrameError::TooLarge {
                len: 90 << 20,
                limit: PREAUTH_FRAME
            })
        );
        assert_eq!(Frame::decode(&[9, 0]), Err(FrameError::Version(9)));
        for f in [
            Frame::Pake { msg: vec![0x41; 33] },
            Frame::Chunk {
                hash: [7; 32],
                total: 40 << 20,
                bytes: vec![1, 2, 3],
            },
        ] {
            let bytes = f.encode();
            assert_eq!(Frame::decode(&bytes[4..]).unwrap(), f);
            assert!(Frame::length(bytes[..4].try_into().unwrap(), PREAUTH_FRAME).is_ok());
        }
        // Pake is variant 8 and Chunk variant 9 (replication.md section 4).
        assert_eq!(Frame::Pake { msg: vec![] }.encode()[5], 8);
        assert_eq!(
            Frame::Chunk {
                hash: [0; 32],
                total: 0,
                bytes: vec![]
            }
            .encode()[5],
            9
        );
        // Alive is variant 13 and, like every frame, carries version byte 5.
        let alive = Frame::Alive {
            node: "node-a".into(),
            epoch: 2,
            stamp: 300,
            holds: Vector::from([(1, 4), (9, 2)]),
        };
        let bytes = alive.encode();
        assert_eq!((bytes[4], bytes[5]), (PROTOCOL, 13));
        assert_eq!(Frame::decode(&bytes[4..]).unwrap(), alive);
        assert!(alive_allowed(Some(b"tandem-mirror/6")));
        assert!(!alive_allowed(Some(b"tandem-mirror/5")) && !alive_allowed(None));
        let mut rng = crate::testrng::XorShift(0xdead_beef_1234_5678);
        for _ in 0..5000 {
            let x = rng.next_u64();
            let len = (x % 80) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (x >> (i % 50)) as u8).collect();
            if !b.is_empty() {
                b[0] = PROTOCOL;
            }
            let _ = Frame::decode(&b);
        }
    }

    #[test]
    fn frames_appended_to_a_buffer_are_the_frames_encoded_alone() {
        let batch = Frame::Batch {
            id: 300,
            entries: (1..=3)
                .map(|seq| WireEntry {
                    origin: 0xd10b_1551_8d68_c2c6,
                    seq,
                    hlc: seq << 16,
                    hash: [seq as u8; 32],
                    payload: vec![seq as u8; 200 * seq as usize],
                })
                .collect(),
            blobs: vec![WireBlob {
                hash: [9; 32],
                body: (0..70_000u32).map(|i| i as u8).collect(),
            }],
        };
        let chunk = Frame::Chunk {
            hash: [9; 32],
            total: 5,
            bytes: vec![1, 2, 3],
        };
        // Length, version and postcard body, as format section 4 says.
        let body = postcard::to_allocvec(&batch).unwrap();
        let alone = batch.encode();
        assert_eq!(&alone[..4], &((body.len() + 1) as u32).to_be_bytes());
        assert_eq!(alone[4], PROTOCOL);
        assert_eq!(&alone[5..], &body[..]);
        // Appended after another frame: both decode, in order.
        let mut out = Vec::new();
        chunk.encode_into(&mut out);
        let first = out.len();
        batch.encode_into(&mut out);
        assert_eq!(&out[..first], &chunk.encode()[..]);
        assert_eq!(&out[first..], &alone[..]);
        assert_eq!(Frame::decode(&out[first + 4..]).unwrap(), batch);
    }
}
