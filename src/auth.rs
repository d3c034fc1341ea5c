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
}
