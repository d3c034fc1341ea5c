//! COMPRESS=DEFLATE (RFC 4978): after `COMPRESS DEFLATE` both directions
//! of the connection are one raw DEFLATE stream each (RFC 1951, no zlib
//! header). Every flush of the session ends with a sync flush, so each
//! response is complete on the wire when the session has sent it.

use super::conn::Conn;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Compressed output held before it is written on: beyond it a write waits.
const OUT_LIMIT: usize = 64 * 1024;
/// Compressed input read at once.
const IN_CHUNK: usize = 16 * 1024;

pub struct Deflate {
    inner: Conn,
    comp: Compress,
    decomp: Decompress,
    /// Compressed bytes not yet written to `inner` (from `out_pos`).
    out: Vec<u8>,
    out_pos: usize,
    /// Data was compressed since the last sync flush.
    unsynced: bool,
    /// Compressed bytes read from `inner` and not yet inflated.
    input: Vec<u8>,
    in_pos: usize,
    /// The client's stream ended (a final block) or its connection did.
    eof: bool,
}

fn progress(before: u64, after: u64) -> usize {
    usize::try_from(after - before).unwrap_or(usize::MAX)
}

impl Deflate {
    /// `received`: compressed bytes that arrived before the switch (a
    /// client that sent its next command right after COMPRESS).
    pub fn new(inner: Conn, received: Vec<u8>) -> Deflate {
        Deflate {
            inner,
            comp: Compress::new(Compression::default(), false),
            decomp: Decompress::new(false),
            out: Vec::new(),
            out_pos: 0,
            unsynced: false,
            input: received,
            in_pos: 0,
            eof: false,
        }
    }

    pub fn inner(&self) -> &Conn {
        &self.inner
    }

    /// Write what is compressed to the inner stream.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Run the compressor over `input` with `flush` until it has taken all
    /// of it and, for a sync flush, emitted everything (it stops only when
    /// output space is left over).
    fn compress(&mut self, input: &[u8], flush: FlushCompress) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            self.out.reserve(input.len() - taken + 1024);
            let (before_in, before_out) = (self.comp.total_in(), self.comp.total_out());
            self.comp
                .compress_vec(&input[taken..], &mut self.out, flush)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            taken += progress(before_in, self.comp.total_in());
            let produced = progress(before_out, self.comp.total_out());
            let room_left = self.out.len() < self.out.capacity();
            if taken == input.len() && room_left {
                return Ok(taken);
            }
            if produced == 0 && progress(before_in, self.comp.total_in()) == 0 && room_left {
                return Err(io::Error::other("deflate made no progress"));
            }
        }
    }
}

impl AsyncWrite for Deflate {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() - this.out_pos >= OUT_LIMIT {
            ready!(this.drain(cx))?;
        }
        let take = &buf[..buf.len().min(OUT_LIMIT)];
        let n = this.compress(take, FlushCompress::None)?;
        this.unsynced |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unsynced {
            this.compress(&[], FlushCompress::Sync)?;
            this.unsynced = false;
        }
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Deflate {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Inflate what is buffered, and what the inflater still holds
            // from input it took earlier (when the caller's buffer was full).
            let (before_in, before_out) = (this.decomp.total_in(), this.decomp.total_out());
            let status = this
                .decomp
                .decompress(&this.input[this.in_pos..], buf.initialize_unfilled(), FlushDecompress::None)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad DEFLATE data from the client: {e}")))?;
            let taken = progress(before_in, this.decomp.total_in());
            this.in_pos += taken;
            let produced = progress(before_out, this.decomp.total_out());
            buf.advance(produced);
            if status == Status::StreamEnd {
                this.eof = true;
            }
            if produced > 0 || this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.in_pos < this.input.len() {
                if taken == 0 {
                    // Input left, room for output, and nothing moved: only
                    // a broken stream does that.
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "DEFLATE stream stalled")));
                }
                continue;
            }
            // Everything taken: read more compressed input.
            this.input.clear();
            this.in_pos = 0;
            this.input.resize(IN_CHUNK, 0);
            let mut rb = ReadBuf::new(&mut this.input);
            let r = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.input.truncate(n);
            ready!(r)?;
            if n == 0 {
                this.eof = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_directions_round_trip_with_sync_flushes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut d = Deflate::new(Conn::Plain(s), Vec::new());
            let big: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
            d.write_all(&big).await.unwrap();
            d.flush().await.unwrap();
            d.write_all(b"end\r\n").await.unwrap();
            d.flush().await.unwrap();
            let mut back = [0u8; 5];
            d.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"pong\n");
            big
        });
        let (s, _) = listener.accept().await.unwrap();
        let mut d = Deflate::new(Conn::Plain(s), Vec::new());
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"end\r\n") {
            let n = d.read(&mut buf).await.unwrap();
            assert!(n > 0, "stream ended early");
            got.extend_from_slice(&buf[..n]);
        }
        d.write_all(b"pong\n").await.unwrap();
        d.flush().await.unwrap();
        let big = client.await.unwrap();
        assert_eq!(&got[..big.len()], &big[..]);
    }
}
