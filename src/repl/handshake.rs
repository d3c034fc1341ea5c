//! Authentication of a mirror connection, the first frames on its stream
//! (`replication.md` section 3): the driver of the state machines in
//! `engine::handshake`, which hold every decision.
//!
//! Every frame read here is bounded by [`PREAUTH_FRAME`]; errors name the
//! frame's kind, never its contents. After this, the dialer sends `Hello`
//! and the acceptor answers `Vector` (section 5.1): see `link` and
//! `receive` in `quic.rs`.

use super::engine::handshake::{AcceptAuth, AcceptFault, AuthStep, DialAuth, EXPORTER_LABEL};
use super::error::LinkError;
use super::frame::{Frame, PREAUTH_FRAME};
use super::stream::{read_frame, write_frame};
use super::Mirror;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// This connection's TLS exporter value.
fn exporter(conn: &quinn::Connection) -> Result<[u8; 32], LinkError> {
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, EXPORTER_LABEL, b"")
        .map_err(|_| LinkError::Local(anyhow::anyhow!("TLS exporter unavailable")))?;
    Ok(ekm)
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
    let (mut auth, first) = DialAuth::start(secret, exporter(conn)?);
    write_frame(send, &first).await?;
    loop {
        match auth.frame(read_frame(recv, mirror, PREAUTH_FRAME).await?)? {
            AuthStep::Send(f) => write_frame(send, &f).await?,
            AuthStep::Done(_) => return Ok(()),
        }
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
    let mut auth = AcceptAuth::new(secret, exporter(conn)?);
    loop {
        let f = read_frame(recv, mirror, PREAUTH_FRAME).await?;
        match auth.frame(f) {
            Ok(AuthStep::Send(f)) => write_frame(send, &f).await?,
            Ok(AuthStep::Done(f)) => {
                if let Some(f) = f {
                    write_frame(send, &f).await?;
                }
                return Ok(());
            }
            Err(AcceptFault::Unexpected(e)) => {
                mirror.auth_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            Err(AcceptFault::WrongSecret) => {
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
        }
    }
}
