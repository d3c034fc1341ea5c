//! Authentication of a mirror connection, the first frames on its stream
//! (`replication.md` section 3).
//!
//! Both sides prove the shared secret with SPAKE2 (a password-authenticated
//! key exchange, RustCrypto's `spake2` crate) bound to this connection's
//! TLS exporter, then confirm the key with a MAC each, the dialer first. A
//! SPAKE2 message reveals nothing about the secret, and a confirmation MAC
//! can be checked only by a party that ran the exchange with the secret it
//! guessed: an eavesdropper (behind TLS anyway) or an impostor on either
//! side gets at most one online guess per connection, never material for
//! an offline dictionary search. The acceptor reveals its MAC only after
//! the dialer's proved the secret.
//!
//! Every frame read here is bounded by [`PREAUTH_FRAME`]; errors name the
//! frame's kind, never its contents. After this, the dialer sends `Hello`
//! and the acceptor answers `Vector` (section 5.1): see `link` and
//! `receive` in `quic.rs`.

use super::error::LinkError;
use super::frame::{Frame, PREAUTH_FRAME};
use super::stream::{read_frame, write_frame};
use super::Mirror;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::sync::atomic::Ordering;
use std::time::Duration;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-tandem-mirror-auth";
/// blake3 `derive_key` context of the SPAKE2 password, from the secret.
const PASSWORD_CONTEXT: &str = "tandem mirror secret v3";
/// blake3 `derive_key` context of the confirmation key, from the SPAKE2 key.
const CONFIRM_CONTEXT: &str = "tandem mirror confirm v3";

/// This connection's TLS exporter value.
fn exporter(conn: &quinn::Connection) -> Result<[u8; 32], LinkError> {
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, EXPORTER_LABEL, b"")
        .map_err(|_| LinkError::Local(anyhow::anyhow!("TLS exporter unavailable")))?;
    Ok(ekm)
}

/// The two SPAKE2 identities: the role and this connection's exporter
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

/// The dialer's half: exchange SPAKE2 messages, prove the key, then check
/// the acceptor's proof.
pub async fn dial(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    secret: &[u8],
    mirror: &Mirror,
) -> Result<(), LinkError> {
    let ekm = exporter(conn)?;
    let (me, them) = identities(&ekm);
    let (state, msg) = Spake2::<Ed25519Group>::start_a(&password(secret), &me, &them);
    write_frame(send, &Frame::Pake { msg }).await?;
    let theirs = match read_frame(recv, mirror, PREAUTH_FRAME).await? {
        Frame::Pake { msg } => msg,
        Frame::Refused { reason } => return Err(LinkError::refused_by_peer(&reason)),
        other => {
            return Err(LinkError::Unexpected {
                expected: "pake",
                got: other.kind(),
            })
        }
    };
    let key = state.finish(&theirs).map_err(|_| LinkError::PeerUnproven)?;
    write_frame(
        send,
        &Frame::Auth {
            mac: mac(&key, &ekm, b"client"),
        },
    )
    .await?;
    match read_frame(recv, mirror, PREAUTH_FRAME).await? {
        Frame::Auth { mac: proof } if ct_eq(&proof, &mac(&key, &ekm, b"server")) => Ok(()),
        Frame::Auth { .. } => Err(LinkError::PeerUnproven),
        Frame::Refused { reason } => Err(LinkError::refused_by_peer(&reason)),
        other => Err(LinkError::Unexpected {
            expected: "auth",
            got: other.kind(),
        }),
    }
}

/// The acceptor's half: exchange SPAKE2 messages, check the dialer's
/// proof, then prove the key. A wrong proof (or a SPAKE2 message that is
/// not one) is counted in `auth_failures` and answered with `Refused`
/// before the connection is closed; a frame of another kind is counted
/// there too and ends the connection.
pub async fn accept(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    secret: &[u8],
    mirror: &Mirror,
) -> Result<(), LinkError> {
    let ekm = exporter(conn)?;
    // A first frame of another kind is a failed authentication too.
    let unexpected = |expected, got: Frame| {
        mirror.auth_failures.fetch_add(1, Ordering::Relaxed);
        LinkError::Unexpected { expected, got: got.kind() }
    };
    let theirs = match read_frame(recv, mirror, PREAUTH_FRAME).await? {
        Frame::Pake { msg } => msg,
        other => return Err(unexpected("pake", other)),
    };
    let (them, me) = identities(&ekm);
    let (state, msg) = Spake2::<Ed25519Group>::start_b(&password(secret), &them, &me);
    write_frame(send, &Frame::Pake { msg }).await?;
    let proof = match read_frame(recv, mirror, PREAUTH_FRAME).await? {
        Frame::Auth { mac } => mac,
        other => return Err(unexpected("auth", other)),
    };
    let key = state.finish(&theirs).ok();
    let Some(key) = key.filter(|k| ct_eq(&proof, &mac(k, &ekm, b"client"))) else {
        mirror.auth_failures.fetch_add(1, Ordering::Relaxed);
        let _ = write_frame(
            send,
            &Frame::Refused {
                reason: "wrong shared secret".into(),
            },
        )
        .await;
        let _ = send.finish();
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.close(1u32.into(), b"wrong secret");
        return Err(LinkError::WrongSecret);
    };
    write_frame(
        send,
        &Frame::Auth {
            mac: mac(&key, &ekm, b"server"),
        },
    )
    .await
}
