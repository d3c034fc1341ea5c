//! Authentication of a mirror connection, the first frames on its stream
//! (`replication.md` section 3). Every frame read here is bounded by
//! [`PREAUTH_FRAME`]; errors name the frame's kind, never its contents.
//!
//! After this, the dialer sends `Hello` and the acceptor answers `Vector`
//! (section 5.1): see `link` and `receive` in `quic.rs`.

use super::error::LinkError;
use super::frame::{Frame, PREAUTH_FRAME};
use super::stream::{read_frame, write_frame};
use super::Mirror;
use std::sync::atomic::Ordering;
use std::time::Duration;

const EXPORTER_LABEL: &[u8] = b"EXPORTER-tandem-mirror-auth";

/// This connection's TLS exporter value.
fn exporter(conn: &quinn::Connection) -> Result<[u8; 32], LinkError> {
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, EXPORTER_LABEL, b"")
        .map_err(|_| LinkError::Local(anyhow::anyhow!("TLS exporter unavailable")))?;
    Ok(ekm)
}

/// Keyed blake3 over this connection's TLS exporter and the side: a relay
/// cannot reuse it on another connection, and a reflected MAC does not fit.
fn mac(secret: &[u8], ekm: &[u8; 32], side: &[u8]) -> [u8; 32] {
    let key = blake3::derive_key("tandem mirror secret v1", secret);
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(side);
    h.update(ekm);
    *h.finalize().as_bytes()
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    crate::auth::constant_time_eq(a, b)
}

/// The dialer's half: prove the secret, then check the acceptor's proof.
pub async fn dial(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    secret: &[u8],
    mirror: &Mirror,
) -> Result<(), LinkError> {
    let ekm = exporter(conn)?;
    write_frame(
        send,
        &Frame::Auth {
            mac: mac(secret, &ekm, b"client"),
        },
    )
    .await?;
    match read_frame(recv, mirror, PREAUTH_FRAME).await? {
        Frame::Auth { mac: theirs } if ct_eq(&theirs, &mac(secret, &ekm, b"server")) => Ok(()),
        Frame::Auth { .. } => Err(LinkError::PeerUnproven),
        Frame::Refused { reason } => Err(LinkError::refused_by_peer(&reason)),
        other => Err(LinkError::Unexpected {
            expected: "auth",
            got: other.kind(),
        }),
    }
}

/// The acceptor's half: check the dialer's proof, then prove the secret.
/// A wrong proof is counted in `auth_failures` and answered with
/// `Refused` before the connection is closed.
pub async fn accept(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    secret: &[u8],
    mirror: &Mirror,
) -> Result<(), LinkError> {
    let ekm = exporter(conn)?;
    let theirs = match read_frame(recv, mirror, PREAUTH_FRAME).await? {
        Frame::Auth { mac } => mac,
        other => {
            return Err(LinkError::Unexpected {
                expected: "auth",
                got: other.kind(),
            })
        }
    };
    if !ct_eq(&theirs, &mac(secret, &ekm, b"client")) {
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
    }
    write_frame(
        send,
        &Frame::Auth {
            mac: mac(secret, &ekm, b"server"),
        },
    )
    .await
}
