//! TLS for the IMAP listeners: rustls with the ring provider only, and a
//! certificate either from the config or self-signed (rcgen) at first start
//! and reused after.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Install ring as the process-wide rustls provider (once). With one
/// provider compiled in this cannot be ambiguous; the call is a guard.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where the generated certificate lives in the data directory.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (data_dir.join("tls/cert.pem"), data_dir.join("tls/key.pem"))
}

/// Create a self-signed certificate for `names` unless one exists. The
/// subject's CommonName is the first name (clients such as fetchmail compare
/// it with the host they connected to), the subject alternative names are
/// all of them.
pub fn ensure_self_signed(cert: &Path, key: &Path, names: Vec<String>) -> anyhow::Result<()> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let ck = self_signed(names).context("generating a self-signed certificate")?;
    let dir = cert.parent().expect("cert path has a parent");
    std::fs::create_dir_all(dir)?;
    std::fs::write(cert, ck.cert.pem())?;
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(key)?;
        f.write_all(ck.signing_key.serialize_pem().as_bytes())?;
        f.sync_all()?;
    }
    #[cfg(not(unix))]
    std::fs::write(key, ck.signing_key.serialize_pem())?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

fn self_signed(names: Vec<String>) -> Result<rcgen::CertifiedKey<rcgen::KeyPair>, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names.clone())?;
    let mut dn = rcgen::DistinguishedName::new();
    if let Some(first) = names.first() {
        dn.push(rcgen::DnType::CommonName, first.as_str());
    }
    params.distinguished_name = dn;
    let signing_key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&signing_key)?;
    Ok(rcgen::CertifiedKey { cert, signing_key })
}

/// Read a PEM certificate chain and private key.
pub fn load_pem(
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening certificate {}", cert.display()))?,
    ))
    .collect::<Result<_, _>>()
    .with_context(|| format!("reading certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no certificate", cert.display());
    }
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening private key {}", key.display()))?,
    ))
    .with_context(|| format!("reading private key {}", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("{} holds no private key", key.display()))?;
    Ok((certs, key_der))
}

/// The rustls server configuration for the IMAP listeners.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    hostname: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    install_provider();
    let (cert, key) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let (c, k) = generated_paths(data_dir);
            ensure_self_signed(
                &c,
                &k,
                vec![hostname.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()],
            )?;
            (c, k)
        }
        _ => anyhow::bail!("imap.tls_cert and imap.tls_key go together"),
    };
    let (certs, key_der) = load_pem(&cert, &key)?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .context("certificate and key do not match")?;
    Ok(Arc::new(cfg))
}
