//! The first frames of a link as state machines: the proof of the shared
//! secret (`replication.md` section 3) and the dialer's `Hello` checked by
//! the acceptor (section 5.1).
//!
//! Both sides prove the shared secret with SPAKE2 (a password-authenticated
//! key exchange, RustCrypto's `spake2` crate) bound to the connection's TLS
//! exporter value, then confirm the key with a MAC each, the dialer first.
//! A SPAKE2 message reveals nothing about the secret, and a confirmation
//! MAC can be checked only by a party that ran the exchange with the
//! secret it guessed: an eavesdropper (behind TLS anyway) or an impostor
//! on either side gets at most one online guess per connection, never
//! material for an offline dictionary search. The acceptor reveals its MAC
//! only after the dialer's proved the secret.
//!
//! The driver (`super::super::handshake`) reads the exporter value from
//! the TLS connection, moves the frames and carries out what a refusal
//! needs (telling the peer, closing, counting).

use super::vector::Vector;
use crate::repl::error::LinkError;
use crate::repl::frame::Frame;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::time::{Duration, Instant};

/// The TLS exporter label both sides derive the connection's value with.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-tandem-mirror-auth";
/// blake3 `derive_key` context of the SPAKE2 password, from the secret.
const PASSWORD_CONTEXT: &str = "tandem mirror secret v3";
/// blake3 `derive_key` context of the confirmation key, from the SPAKE2 key.
const CONFIRM_CONTEXT: &str = "tandem mirror confirm v3";

/// The two SPAKE2 identities: the role and the connection's exporter
/// value, so that the key exists only on this TLS connection.
fn identities(ekm: &[u8; 32]) -> (Identity, Identity) {
    (
        Identity::new(&[b"tandem mirror dialer ".as_slice(), ekm].concat()),
        Identity::new(&[b"tandem mirror acceptor ".as_slice(), ekm].concat()),
    )
}

fn password(secret: &[u8]) -> Password {
    Password::new(blake3::derive_key(PASSWORD_CONTEXT, secret))
}

/// The confirmation MAC of one side: keyed blake3 over the side's label
/// and the exporter value, under a key derived from the SPAKE2 key.
fn mac(spake_key: &[u8], ekm: &[u8; 32], side: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(&blake3::derive_key(CONFIRM_CONTEXT, spake_key));
    h.update(side);
    h.update(ekm);
    *h.finalize().as_bytes()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    crate::auth::constant_time_eq(a, b)
}

/// The dialer's proof of the secret.
pub struct DialAuth {
    ekm: [u8; 32],
    state: Option<Spake2<Ed25519Group>>,
    key: Option<Vec<u8>>,
}

/// What a side of the proof does next.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this frame and read the next.
    Send(Frame),
    /// Send this frame (if any); the peer proved the secret.
    Done(Option<Frame>),
}

impl DialAuth {
    /// Start: the dialer's SPAKE2 message goes first.
    pub fn start(secret: &[u8], ekm: [u8; 32]) -> (DialAuth, Frame) {
        let (me, them) = identities(&ekm);
        let (state, msg) = Spake2::<Ed25519Group>::start_a(&password(secret), &me, &them);
        (
            DialAuth {
                ekm,
                state: Some(state),
                key: None,
            },
            Frame::Pake { msg },
        )
    }

    /// A frame from the acceptor.
    pub fn frame(&mut self, f: Frame) -> Result<AuthStep, LinkError> {
        match (f, self.state.take(), &self.key) {
            (Frame::Pake { msg }, Some(state), None) => {
                let key = state.finish(&msg).map_err(|_| LinkError::PeerUnproven)?;
                let proof = mac(&key, &self.ekm, b"client");
                self.key = Some(key);
                Ok(AuthStep::Send(Frame::Auth { mac: proof }))
            }
            (Frame::Auth { mac: proof }, None, Some(key)) if ct_eq(&proof, &mac(key, &self.ekm, b"server")) => Ok(AuthStep::Done(None)),
            (Frame::Auth { .. }, None, Some(_)) => Err(LinkError::PeerUnproven),
            (Frame::Refused { reason }, _, _) => Err(LinkError::refused_by_peer(&reason)),
            (other, state, key) => Err(LinkError::Unexpected {
                expected: if state.is_some() || key.is_none() { "pake" } else { "auth" },
                got: other.kind(),
            }),
        }
    }
}

/// The acceptor's check of the dialer's proof, then its own.
pub struct AcceptAuth {
    ekm: [u8; 32],
    secret: Vec<u8>,
    /// The dialer's SPAKE2 message and this side's state, once exchanged.
    exchanged: Option<(Vec<u8>, Spake2<Ed25519Group>)>,
}

/// Why the acceptor's proof failed: [`AcceptFault::WrongSecret`] is
/// answered with `Refused` before the connection closes; both count as
/// failed authentications.
#[derive(Debug)]
pub enum AcceptFault {
    WrongSecret,
    Unexpected(LinkError),
}

impl AcceptAuth {
    pub fn new(secret: &[u8], ekm: [u8; 32]) -> AcceptAuth {
        AcceptAuth {
            ekm,
            secret: secret.to_vec(),
            exchanged: None,
        }
    }

    /// A frame from the dialer.
    pub fn frame(&mut self, f: Frame) -> Result<AuthStep, AcceptFault> {
        match (f, self.exchanged.take()) {
            (Frame::Pake { msg: theirs }, None) => {
                let (them, me) = identities(&self.ekm);
                let (state, msg) = Spake2::<Ed25519Group>::start_b(&password(&self.secret), &them, &me);
                self.exchanged = Some((theirs, state));
                Ok(AuthStep::Send(Frame::Pake { msg }))
            }
            (Frame::Auth { mac: proof }, Some((theirs, state))) => {
                let key = state.finish(&theirs).ok();
                let Some(key) = key.filter(|k| ct_eq(&proof, &mac(k, &self.ekm, b"client"))) else {
                    return Err(AcceptFault::WrongSecret);
                };
                Ok(AuthStep::Done(Some(Frame::Auth {
                    mac: mac(&key, &self.ekm, b"server"),
                })))
            }
            (other, exchanged) => Err(AcceptFault::Unexpected(LinkError::Unexpected {
                expected: if exchanged.is_some() { "auth" } else { "pake" },
                got: other.kind(),
            })),
        }
    }
}

/// Which end of a link a [`Deadline`] bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// From the connect to the acceptor's `Vector`.
    Dialer,
    /// From the first packet to a proven secret and the dialer's `Hello`
    /// (`replication.md` section 2).
    Acceptor,
}

/// The deadline of a link's opening, as a state machine with no clock of
/// its own: the driver gives it the time (`now`) when the opening starts
/// and when the timer it asks for ([`Deadline::poll_timeout`]) fires, and
/// ends the link with the error [`Deadline::handle_timeout`] returns.
#[derive(Debug, Clone)]
pub struct Deadline {
    side: Side,
    timeout: Duration,
    /// `None` once the opening is done.
    at: Option<Instant>,
}

impl Deadline {
    /// The opening starts at `now` and must be done within `timeout`.
    pub fn start(side: Side, now: Instant, timeout: Duration) -> Deadline {
        Deadline {
            side,
            timeout,
            at: Some(now + timeout),
        }
    }

    /// The opening is done (acceptor: `Hello` checked; dialer: `Vector`
    /// read): no deadline any more.
    pub fn opened(&mut self) {
        self.at = None;
    }

    /// When the driver must call [`Deadline::handle_timeout`], if at all.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.at
    }

    /// The timer fired at `now`: past the deadline the link ends with this
    /// error (a `timeout`; the acceptor counts it in `auth_timeouts`).
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkError> {
        match self.at {
            Some(at) if now >= at => {
                self.at = None;
                let ms = self.timeout.as_millis();
                Err(LinkError::Timeout(match self.side {
                    Side::Acceptor => format!("no authentication within {ms} ms"),
                    Side::Dialer => format!("no handshake within {ms} ms"),
                }))
            }
            _ => Ok(()),
        }
    }
}

/// Whether a node id is acceptable: 1-64 characters of A-Z a-z 0-9 - _ .
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A peer's `Hello`, checked (from either side): whom a link reaches.
#[derive(Debug, PartialEq, Eq)]
pub struct PeerHello {
    pub node_id: String,
    pub role: String,
    pub epoch: u64,
}

/// The checks of a `Hello`, from either side: a node id of the right
/// shape, and an origin other than this node's own. `Ok(Err(f))`: `f` is
/// not a `Hello`.
fn check_hello(f: Frame, own_origin: u64) -> Result<Result<PeerHello, Frame>, LinkError> {
    let Frame::Hello {
        node_id,
        origin,
        role,
        epoch,
    } = f
    else {
        return Ok(Err(f));
    };
    if !valid_node_id(&node_id) {
        return Err(LinkError::BadHello("the node id is not 1-64 characters of A-Z a-z 0-9 - _ ."));
    }
    if origin == own_origin {
        return Err(LinkError::BadHello("a peer claims this node's own origin"));
    }
    Ok(Ok(PeerHello { node_id, role, epoch }))
}

/// What the acceptor makes of the dialer's first frame after the proof.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// A mirror link, and whom it comes from.
    Link(PeerHello),
    /// A merkle resync exchange (`super::super::resync`).
    Resync { node_id: String },
}

/// Check the dialer's `Hello` (or `ResyncHello`) against this node's own
/// origin. An error that [`LinkError::refuses_peer`] is told to the peer.
pub fn opening(f: Frame, own_origin: u64) -> Result<Opening, LinkError> {
    match check_hello(f, own_origin)? {
        Ok(hello) => Ok(Opening::Link(hello)),
        Err(Frame::ResyncHello { node_id }) if valid_node_id(&node_id) => Ok(Opening::Resync { node_id }),
        Err(other) => Err(LinkError::Unexpected {
            expected: "hello",
            got: other.kind(),
        }),
    }
}

/// The dialer's reading of the acceptor's `Hello` (its introduction, on a
/// link of version 7, `frame::acceptor_introduces`), checked as the
/// acceptor checks the dialer's ([`opening`]). A refusal in its place is
/// the peer's.
pub fn introduction(f: Frame, own_origin: u64) -> Result<PeerHello, LinkError> {
    match check_hello(f, own_origin)? {
        Ok(hello) => Ok(hello),
        Err(Frame::Refused { reason }) => Err(LinkError::refused_by_peer(&reason)),
        Err(other) => Err(LinkError::Unexpected {
            expected: "hello",
            got: other.kind(),
        }),
    }
}

/// What the acceptor holds: (origin, seq) pairs and the chain hash at each.
pub type Held = (Vector, Vec<(u64, [u8; 32])>);

/// The dialer's reading of the acceptor's answer to `Hello`: the vector
/// and chain hashes it holds.
pub fn vector(f: Frame) -> Result<Held, LinkError> {
    match f {
        Frame::Vector { vector, hashes } => Ok((vector, hashes)),
        Frame::Refused { reason } => Err(LinkError::refused_by_peer(&reason)),
        other => Err(LinkError::Unexpected {
            expected: "vector",
            got: other.kind(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run both sides against each other; the result of each.
    fn run(dialer_secret: &[u8], acceptor_secret: &[u8], ekm_d: [u8; 32], ekm_a: [u8; 32]) -> (Result<(), String>, Result<(), String>) {
        let (mut d, first) = DialAuth::start(dialer_secret, ekm_d);
        let mut a = AcceptAuth::new(acceptor_secret, ekm_a);
        let AuthStep::Send(pake_b) = a.frame(first).unwrap() else {
            panic!("acceptor answers pake")
        };
        let AuthStep::Send(proof) = (match d.frame(pake_b) {
            Ok(s) => s,
            Err(e) => return (Err(e.to_string()), Err("dialer stopped".into())),
        }) else {
            panic!("dialer proves")
        };
        match a.frame(proof) {
            Ok(AuthStep::Done(Some(back))) => (d.frame(back).map(|_| ()).map_err(|e| e.to_string()), Ok(())),
            Ok(other) => panic!("{other:?}"),
            Err(AcceptFault::WrongSecret) => (Err("refused".into()), Err("wrong secret".into())),
            Err(AcceptFault::Unexpected(e)) => panic!("{e}"),
        }
    }

    #[test]
    fn the_same_secret_on_one_connection_proves_both_ways() {
        assert_eq!(run(b"s3cret", b"s3cret", [1; 32], [1; 32]), (Ok(()), Ok(())));
    }

    #[test]
    fn a_wrong_secret_or_another_connection_is_refused() {
        assert_eq!(run(b"s3cret", b"other", [1; 32], [1; 32]).1, Err("wrong secret".into()));
        // A proof made on another TLS connection (relayed) does not hold here.
        assert_eq!(run(b"s3cret", b"s3cret", [1; 32], [2; 32]).1, Err("wrong secret".into()));
    }

    #[test]
    fn frames_out_of_turn_are_refused_by_kind() {
        let (mut d, _) = DialAuth::start(b"s", [0; 32]);
        let e = d.frame(Frame::Auth { mac: [0; 32] }).unwrap_err();
        assert_eq!(e.to_string(), "expected pake, got auth");
        let mut a = AcceptAuth::new(b"s", [0; 32]);
        match a.frame(Frame::Hello {
            node_id: "x".into(),
            origin: 1,
            role: "slave".into(),
            epoch: 0,
        }) {
            Err(AcceptFault::Unexpected(e)) => assert_eq!(e.to_string(), "expected pake, got hello"),
            _ => panic!("accepted a hello before the proof"),
        }
        // An acceptor that forges its proof is caught by the dialer.
        let (mut d, first) = DialAuth::start(b"s", [0; 32]);
        let mut a = AcceptAuth::new(b"s", [0; 32]);
        let AuthStep::Send(pake_b) = a.frame(first).unwrap() else {
            panic!()
        };
        d.frame(pake_b).unwrap();
        assert_eq!(d.frame(Frame::Auth { mac: [9; 32] }).unwrap_err().kind(), "peer-unproven");
    }

    #[test]
    fn an_opening_past_its_deadline_ends_the_link_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Deadline::start(Side::Acceptor, t0, ms(5000));
        assert_eq!(d.poll_timeout(), Some(t0 + ms(5000)));
        // A timer that fires early (or a spurious wake) changes nothing.
        assert!(d.handle_timeout(t0 + ms(4999)).is_ok());
        assert_eq!(d.poll_timeout(), Some(t0 + ms(5000)));
        let e = d.handle_timeout(t0 + ms(5000)).unwrap_err();
        assert_eq!((e.kind(), e.to_string().as_str()), ("timeout", "no authentication within 5000 ms"));
        assert_eq!(d.poll_timeout(), None, "ended once");
        assert!(d.handle_timeout(t0 + ms(9000)).is_ok());
        // An opening done in time asks for no timer and never expires.
        let mut d = Deadline::start(Side::Dialer, t0, ms(200));
        d.opened();
        assert_eq!(d.poll_timeout(), None);
        assert!(d.handle_timeout(t0 + ms(10_000)).is_ok());
        let mut d = Deadline::start(Side::Dialer, t0, ms(200));
        assert_eq!(
            d.handle_timeout(t0 + ms(300)).unwrap_err().to_string(),
            "no handshake within 200 ms"
        );
    }

    /// A `Hello` of a master at epoch 3.
    fn hello(id: &str, origin: u64) -> Frame {
        Frame::Hello {
            node_id: id.into(),
            origin,
            role: "master".into(),
            epoch: 3,
        }
    }

    #[test]
    fn an_acceptors_introduction_is_checked_like_a_hello() {
        assert_eq!(
            introduction(hello("node-b", 2), 1).unwrap(),
            PeerHello {
                node_id: "node-b".into(),
                role: "master".into(),
                epoch: 3
            }
        );
        assert!(matches!(introduction(hello("", 2), 1), Err(LinkError::BadHello(_))));
        assert!(matches!(introduction(hello("a b", 2), 1), Err(LinkError::BadHello(_))));
        assert!(matches!(introduction(hello("node-b", 1), 1), Err(LinkError::BadHello(_))));
        let refused = introduction(
            Frame::Refused {
                reason: "bad-hello: x".into(),
            },
            1,
        )
        .unwrap_err();
        assert!(refused.is_refusal(), "{refused:?}");
        // A peer that answers with its vector at once did not agree on
        // version 7.
        let vector = Frame::Vector {
            vector: Default::default(),
            hashes: vec![],
        };
        assert!(matches!(
            introduction(vector, 1),
            Err(LinkError::Unexpected {
                expected: "hello",
                got: "vector"
            })
        ));
    }

    #[test]
    fn hellos_are_checked() {
        assert_eq!(
            opening(hello("node-b", 2), 1).unwrap(),
            Opening::Link(PeerHello {
                node_id: "node-b".into(),
                role: "master".into(),
                epoch: 3
            })
        );
        assert!(opening(hello("node b", 2), 1).unwrap_err().refuses_peer());
        assert!(opening(hello(&"x".repeat(65), 2), 1).unwrap_err().refuses_peer());
        assert_eq!(
            opening(hello("node-b", 1), 1).unwrap_err().to_string(),
            "refused hello: a peer claims this node's own origin"
        );
        assert_eq!(
            opening(Frame::ResyncHello { node_id: "r".into() }, 1).unwrap(),
            Opening::Resync { node_id: "r".into() }
        );
        assert!(!opening(Frame::ResyncHello { node_id: "".into() }, 1).unwrap_err().refuses_peer());
        assert!(vector(Frame::Refused { reason: "x".into() }).unwrap_err().is_refusal());
    }
}
