//! The session's byte stream: plain TCP, or TLS (implicit, or after
//! STARTTLS, when the plain stream is swapped for its TLS wrapper), and
//! either of them compressed after COMPRESS DEFLATE.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Deflate(Box<super::deflate::Deflate>),
    /// Only while STARTTLS swaps the stream.
    Swapping,
}

impl Conn {
    pub fn is_tls(&self) -> bool {
        match self {
            Conn::Tls(_) => true,
            Conn::Deflate(d) => d.inner().is_tls(),
            Conn::Plain(_) | Conn::Swapping => false,
        }
    }

    pub fn is_compressed(&self) -> bool {
        matches!(self, Conn::Deflate(_))
    }
}

fn swapping() -> std::io::Error {
    std::io::Error::other("stream is being upgraded")
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Swapping => Poll::Ready(Err(swapping())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Swapping => Poll::Ready(Err(swapping())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_flush(cx),
            // Nothing can be buffered in a stream that is not there.
            Conn::Swapping => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Swapping => Poll::Ready(Err(swapping())),
        }
    }
}
