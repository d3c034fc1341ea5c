//! Password hashing (argon2id, PHC strings) and the secret wrapper that never
//! prints its content.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// A secret that redacts itself in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Hash a password for storage (slow on purpose: call off the runtime).
pub fn hash_password(password: &Secret) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.expose().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Check a password against a stored PHC string.
pub fn verify_password(password: &Secret, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default().verify_password(password.expose().as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Password checks that succeeded recently, so that a client logging in
/// again and again (a webmail, a phone polling POP3) does not pay for
/// argon2 every time.
///
/// Nothing secret is kept: an entry is a blake3 hash, keyed by a random
/// key made at start and never stored, of the user, the password and the
/// user's stored PHC string. A lookup hashes what the client sent with
/// the PHC string stored now, so a changed password (a new PHC string) or
/// a deleted user (none) finds nothing, without any invalidation step.
/// Only successes are kept; a wrong password always costs a full check.
/// Entries live `ttl` at most (given with each call: the setting may
/// change while the node runs; zero turns the cache off); when `max` are
/// held the expired ones go, then, if still full, all of them.
pub struct AuthCache {
    key: [u8; 32],
    max: usize,
    seen: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
}

impl AuthCache {
    pub fn new(max: usize) -> AuthCache {
        use argon2::password_hash::rand_core::RngCore;
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        AuthCache {
            key,
            max,
            seen: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn entry(&self, user: &str, password: &Secret, phc: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for part in [user.as_bytes(), password.expose().as_bytes(), phc.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        *h.finalize().as_bytes()
    }

    /// Whether `password` was found correct for `user`, whose stored PHC
    /// string is `phc`, within the last `ttl`.
    pub fn hit(&self, user: &str, password: &Secret, phc: &str, ttl: std::time::Duration) -> bool {
        if self.max == 0 || ttl.is_zero() {
            return false;
        }
        let e = self.entry(user, password, phc);
        let seen = self.seen.lock().expect("auth cache lock");
        seen.get(&e).is_some_and(|at| at.elapsed() < ttl)
    }

    /// Remember that `password` is correct for `user` with `phc`.
    pub fn insert(&self, user: &str, password: &Secret, phc: &str, ttl: std::time::Duration) {
        if self.max == 0 || ttl.is_zero() {
            return;
        }
        let e = self.entry(user, password, phc);
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().expect("auth cache lock");
        if seen.len() >= self.max && !seen.contains_key(&e) {
            seen.retain(|_, at| now.duration_since(*at) < ttl);
            if seen.len() >= self.max {
                seen.clear();
            }
        }
        seen.insert(e, now);
    }
}

/// Compare two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password(&Secret::new("hunter2")).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&Secret::new("hunter2"), &h));
        assert!(!verify_password(&Secret::new("hunter3"), &h));
        assert!(!verify_password(&Secret::new("x"), "not a phc string"));
        assert_eq!(
            format!("{:?} {}", Secret::new("pw"), Secret::new("pw")),
            "Secret(<redacted>) <redacted>"
        );
    }

    #[test]
    fn auth_cache_hits_only_the_same_user_password_and_hash() {
        const TTL: std::time::Duration = std::time::Duration::from_secs(60);
        let c = AuthCache::new(2);
        let pw = Secret::new("hunter2");
        assert!(!c.hit("alice", &pw, "$phc1", TTL));
        c.insert("alice", &pw, "$phc1", TTL);
        assert!(c.hit("alice", &pw, "$phc1", TTL));
        assert!(!c.hit("alice", &Secret::new("hunter3"), "$phc1", TTL), "another password");
        assert!(!c.hit("bob", &pw, "$phc1", TTL), "another user");
        assert!(!c.hit("alice", &pw, "$phc2", TTL), "a changed password hash");
        // Lengths are part of the hash: no shifting bytes between fields.
        c.insert("ab", &Secret::new("c"), "$p", TTL);
        assert!(!c.hit("a", &Secret::new("bc"), "$p", TTL));
        // Full: a third entry drops the others rather than growing.
        c.insert("carol", &pw, "$phc3", TTL);
        assert!(c.hit("carol", &pw, "$phc3", TTL));
        assert!(c.seen.lock().unwrap().len() <= 2);
        // Another process (key) knows nothing.
        assert!(!AuthCache::new(2).hit("carol", &pw, "$phc3", TTL));
    }

    #[test]
    fn auth_cache_entries_expire_and_can_be_off() {
        const TTL: std::time::Duration = std::time::Duration::from_millis(30);
        let c = AuthCache::new(10);
        let pw = Secret::new("pw");
        c.insert("alice", &pw, "$phc", TTL);
        assert!(c.hit("alice", &pw, "$phc", TTL));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(!c.hit("alice", &pw, "$phc", TTL), "expired");
        let off = AuthCache::new(0);
        off.insert("alice", &pw, "$phc", TTL);
        assert!(!off.hit("alice", &pw, "$phc", TTL));
        // A zero time to live (auth_cache_secs = 0) turns it off too.
        c.insert("alice", &pw, "$phc", std::time::Duration::ZERO);
        assert!(!c.hit("alice", &pw, "$phc", std::time::Duration::ZERO));
    }
}
