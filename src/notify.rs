//! systemd's readiness protocol (`sd_notify(3)`): when the service manager
//! starts the daemon with `Type=notify` it sets `NOTIFY_SOCKET` to a Unix
//! datagram socket (a path, or an abstract name written with a leading
//! `@`), and the daemon sends `READY=1` there once it serves, `STOPPING=1`
//! when it begins to shut down. Without `NOTIFY_SOCKET` nothing is sent.
//!
//! The protocol is one datagram of `KEY=VALUE` lines; std's
//! `UnixDatagram` speaks it in a few lines, so no crate is needed for it.

use std::io;

/// Send `state` (newline-separated `KEY=VALUE` lines) to `$NOTIFY_SOCKET`;
/// `Ok(false)` when the variable is not set.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send(&path, state)?;
    Ok(true)
}

#[cfg(unix)]
fn send(path: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => return Err(io::Error::new(io::ErrorKind::Unsupported, "abstract socket names are Linux only")),
        None if bytes.starts_with(b"/") => sock.send_to(state.as_bytes(), path)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {path:?} is neither an absolute path nor an @abstract name"),
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short datagram to NOTIFY_SOCKET"));
    }
    Ok(())
}

#[cfg(not(unix))]
fn send(_: &std::ffi::OsStr, _: &str) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "NOTIFY_SOCKET needs Unix sockets"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_datagram_reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        send(p.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("tandem-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert_eq!(
            send(std::ffi::OsStr::new("relative"), "x").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
