//! Not authenticated state and the connection's layers: CAPABILITY-less
//! commands before login (LOGIN, AUTHENTICATE PLAIN, STARTTLS), the login
//! itself with its limits and cache, and COMPRESS=DEFLATE (RFC 4978).

use super::*;

impl Session {
    pub(super) async fn unauthenticated(&mut self, tag: &str, body: CommandBody<'_>) -> R<Flow> {
        match body {
            CommandBody::Login { username, password } => {
                let user = astr(&username);
                let pw = Secret::new(String::from_utf8_lossy(password.declassify().as_ref()).into_owned());
                self.login(tag, &user, pw).await?;
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                if !matches!(mechanism, imap_codec::imap_types::auth::AuthMechanism::Plain) {
                    self.no(tag, "[CANNOT] Only AUTHENTICATE PLAIN is supported");
                    return Ok(Flow::Continue);
                }
                let data = match initial_response {
                    Some(r) => r.declassify().to_vec(),
                    None => {
                        self.line("+ ");
                        self.flush().await?;
                        let Some(line) = self.next_command().await? else {
                            return Ok(Flow::Logout);
                        };
                        let text = String::from_utf8_lossy(&line).trim().to_string();
                        if text == "*" {
                            self.line(&format!("{tag} BAD Authentication cancelled"));
                            return Ok(Flow::Continue);
                        }
                        match base64_decode(&text) {
                            Some(d) => d,
                            None => {
                                self.line(&format!("{tag} BAD Invalid base64"));
                                return Ok(Flow::Continue);
                            }
                        }
                    }
                };
                // authzid NUL authcid NUL password
                let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
                if parts.len() != 3 {
                    self.line(&format!("{tag} BAD Malformed PLAIN response"));
                    return Ok(Flow::Continue);
                }
                let authz = String::from_utf8_lossy(parts[0]).to_lowercase();
                let user = String::from_utf8_lossy(parts[1]).into_owned();
                if !authz.is_empty() && authz != user.to_lowercase() {
                    self.no(tag, "[AUTHORIZATIONFAILED] Cannot act as another user");
                    return Ok(Flow::Continue);
                }
                let pw = Secret::new(String::from_utf8_lossy(parts[2]).into_owned());
                self.login(tag, &user, pw).await?;
            }
            CommandBody::StartTLS => return self.starttls(tag).await,
            _ => {
                self.line(&format!("{tag} BAD Log in first"));
                if self.count_bad() {
                    return Ok(Flow::Logout);
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// COMPRESS DEFLATE (RFC 4978): the tagged OK is the last thing sent
    /// uncompressed; from then on both directions are DEFLATE streams.
    pub(super) async fn compress(&mut self, tag: &str) -> R<Flow> {
        if self.stream.is_compressed() {
            self.no(tag, "[COMPRESSIONACTIVE] DEFLATE is already active");
            return Ok(Flow::Continue);
        }
        self.line(&format!("{tag} OK DEFLATE active"));
        self.flush().await?;
        // What the client sent after COMPRESS is compressed already.
        let received = self.framer.take_unread();
        let plain = std::mem::replace(&mut self.stream, Conn::Swapping);
        self.stream = Conn::Deflate(Box::new(crate::imap::deflate::Deflate::new(plain, received)));
        Ok(Flow::Continue)
    }

    pub(super) async fn starttls(&mut self, tag: &str) -> R<Flow> {
        let Some(tls) = self.shared.tls.clone() else {
            self.line(&format!("{tag} BAD STARTTLS is not available"));
            return Ok(Flow::Continue);
        };
        if self.stream.is_tls() {
            self.line(&format!("{tag} BAD TLS is already active"));
            return Ok(Flow::Continue);
        }
        self.line(&format!("{tag} OK Begin TLS negotiation now"));
        self.flush().await?;
        // Anything the client pipelined after STARTTLS was sent in the clear
        // and must not be executed inside the TLS session.
        self.framer = crate::imap::preauth_framer(&self.shared);
        let Conn::Plain(tcp) = std::mem::replace(&mut self.stream, Conn::Swapping) else {
            return Ok(Flow::Logout);
        };
        let limit = Duration::from_secs(self.shared.cfg.handshake_timeout_secs);
        match tokio::time::timeout(limit, tokio_rustls::TlsAcceptor::from(tls).accept(tcp)).await {
            Ok(Ok(s)) => {
                self.stream = Conn::Tls(Box::new(s));
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "STARTTLS handshake failed");
                Ok(Flow::Logout)
            }
            Err(_) => {
                bump(&self.shared.counters.timeouts);
                tracing::info!("STARTTLS handshake timed out");
                Ok(Flow::Logout)
            }
        }
    }

    pub(super) async fn login(&mut self, tag: &str, user: &str, pw: Secret) -> R<()> {
        if !plaintext_ok(&self.shared.cfg, &self.peer, self.stream.is_tls()) {
            self.no(tag, "[PRIVACYREQUIRED] Plaintext authentication is disabled");
            return Ok(());
        }
        let user = match mutate::normalize_user(user) {
            Ok(u) => u,
            Err(_) => {
                self.no(tag, "[AUTHENTICATIONFAILED] Authentication failed");
                return Ok(());
            }
        };
        match crate::imap::check_credentials(&self.shared, self.peer.ip(), &user, pw, self.login_deadline).await {
            Credentials::Ok => {}
            Credentials::Throttled => {
                self.no(tag, "[UNAVAILABLE] Too many login attempts; try again later");
                return Ok(());
            }
            Credentials::Wrong => {
                self.no(tag, "[AUTHENTICATIONFAILED] Authentication failed");
                return Ok(());
            }
        }
        let per_user = self.shared.settings.get(crate::settings::Key::ImapMaxConnectionsPerUser) as usize;
        let Some(slot) = self.shared.per_user.take(user.clone(), per_user) else {
            self.no(tag, "[LIMIT] Too many connections for this user");
            return Ok(());
        };
        self.framer.set_limits(
            self.shared.cfg.max_line,
            self.shared.settings.get(crate::settings::Key::ImapMaxLiteral),
        );
        bump(&self.shared.counters.logins);
        tracing::Span::current().record("user", user.as_str());
        tracing::info!("logged in");
        self.auth = Auth::User { name: user, _slot: slot };
        let caps = self.capabilities();
        self.line(&format!("{tag} OK [CAPABILITY {caps}] Logged in"));
        Ok(())
    }
}

/// Strict base64 (an AUTHENTICATE response): only the alphabet and final
/// padding are allowed; the decoding itself is the MIME module's.
pub(super) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let body = s.trim_end_matches('=');
    if !body.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/') {
        return None;
    }
    Some(crate::proto::imap::mime::decode_base64(body.as_bytes()))
}
