//! Ports for tests, shared by the test crates of the workspace
//! (`tests/common` and `tools/tests/common` include this file).

/// A port free for both TCP and UDP on loopback, for a listener a test
/// names in a config before the daemon binds it (and binds again after a
/// restart). It comes from below the kernel's ephemeral range (32768 and up
/// by default), so no socket bound to port 0 meanwhile (a client
/// connection, a peer's dialer) can take it in between; a counter keeps
/// the tests of one binary apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() % 10_000;
    for _ in 0..12_000 {
        let p = (20_000 + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no port free for TCP and UDP");
}
