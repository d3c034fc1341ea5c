//! Frames on a QUIC stream: read under a length limit that is checked on
//! the 4-byte header before any of the body is read or allocated, and
//! written whole.

use super::error::LinkError;
use super::frame::Frame;
use super::Mirror;
use std::sync::atomic::Ordering;

/// Read one frame of at most `limit` bytes. A bad length, version or
/// encoding is counted in `bad_frames`.
pub async fn read_frame(recv: &mut quinn::RecvStream, mirror: &Mirror, limit: u32) -> Result<Frame, LinkError> {
    let mut hdr = [0u8; 4];
    recv.read_exact(&mut hdr)
        .await
        .map_err(|e| read_error("reading a frame header", e))?;
    let n = Frame::length(hdr, limit).inspect_err(|_| {
        mirror.bad_frames.fetch_add(1, Ordering::Relaxed);
    })?;
    let mut body = vec![0u8; n as usize];
    recv.read_exact(&mut body)
        .await
        .map_err(|e| read_error("reading a frame body", e))?;
    Ok(Frame::decode(&body).inspect_err(|_| {
        mirror.bad_frames.fetch_add(1, Ordering::Relaxed);
    })?)
}

fn read_error(during: &'static str, e: quinn::ReadExactError) -> LinkError {
    match e {
        quinn::ReadExactError::FinishedEarly(_) => LinkError::Closed,
        quinn::ReadExactError::ReadError(e) => LinkError::transport(during, e),
    }
}

/// Write one frame.
pub async fn write_frame(send: &mut quinn::SendStream, f: &Frame) -> Result<(), LinkError> {
    send.write_all(&f.encode())
        .await
        .map_err(|e| LinkError::transport("writing a frame", e))
}
