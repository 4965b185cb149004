//! Sealing credentials stored in the database (the console's connect flow):
//! XChaCha20-Poly1305 with a 256-bit key that `sluice serve` reads from
//! `SLUICE_CREDENTIALS_KEY` (base64) or the file `SLUICE_CREDENTIALS_KEY_FILE`.
//!
//! A sealed value is `v1` ‖ key id (4 bytes of the key's sha256) ‖ nonce
//! (24 random bytes) ‖ ciphertext with its tag; the connection id and
//! credential name are authenticated with it, so a sealed value copied to
//! another row does not open. Rotation: start with the new key in
//! `SLUICE_CREDENTIALS_KEY` and the old one in `SLUICE_CREDENTIALS_OLD_KEY`
//! (or `_FILE`); values sealed with the old key are opened and sealed again
//! with the new one at start, after which the old key can go.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const VERSION: &[u8; 2] = b"v1";

/// A key.
struct Key {
    id: [u8; 4],
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: &[u8], var: &str) -> Result<Key, String> {
        if bytes.len() != 32 {
            return Err(format!(
                "{var} must be 32 bytes (base64 of 32 random bytes: `openssl rand -base64 32`), not {}",
                bytes.len()
            ));
        }
        let digest = Sha256::digest(bytes);
        Ok(Key {
            id: [digest[0], digest[1], digest[2], digest[3]],
            cipher: XChaCha20Poly1305::new(bytes.into()),
        })
    }
}

/// The credential keys of this process.
#[derive(Default)]
pub struct Vault {
    key: Option<Key>,
    old: Option<Key>,
}

/// What opening a sealed value found.
pub struct Opened {
    /// The value.
    pub value: String,
    /// Sealed with the old key: seal it again.
    pub stale: bool,
}

fn read_key(var: &str) -> Result<Option<Key>, String> {
    let file_var = format!("{var}_FILE");
    let text = match (std::env::var(var), std::env::var(&file_var)) {
        (Ok(v), _) if !v.trim().is_empty() => v,
        (_, Ok(path)) if !path.trim().is_empty() => std::fs::read_to_string(path.trim())
            .map_err(|e| format!("{file_var}=`{path}` cannot be read: {e}"))?,
        _ => return Ok(None),
    };
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("{var} is not base64: {e}"))?;
    Key::new(&bytes, var).map(Some)
}

impl Vault {
    /// The keys from `SLUICE_CREDENTIALS_KEY[_FILE]` and
    /// `SLUICE_CREDENTIALS_OLD_KEY[_FILE]` (none: nothing can be sealed).
    pub fn from_env() -> Result<Vault, String> {
        Ok(Vault {
            key: read_key("SLUICE_CREDENTIALS_KEY")?,
            old: read_key("SLUICE_CREDENTIALS_OLD_KEY")?,
        })
    }

    /// A vault with this key (tests).
    pub fn with_key(bytes: &[u8]) -> Result<Vault, String> {
        Ok(Vault {
            key: Some(Key::new(bytes, "the key")?),
            old: None,
        })
    }

    /// Whether credentials can be sealed.
    pub fn can_seal(&self) -> bool {
        self.key.is_some()
    }

    /// Seals `value`, bound to `name` (the secret's name).
    pub fn seal(&self, name: &str, value: &str) -> Result<Vec<u8>, String> {
        let key = self.key.as_ref().ok_or_else(|| {
            "credentials cannot be stored: `sluice serve` has no key; set SLUICE_CREDENTIALS_KEY (base64 of 32 random bytes: `openssl rand -base64 32`) or SLUICE_CREDENTIALS_KEY_FILE".to_string()
        })?;
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = key
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = Vec::with_capacity(2 + 4 + 24 + sealed.len());
        out.extend_from_slice(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed for `name`.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Opened, String> {
        if sealed.len() < 2 + 4 + 24 + 16 || &sealed[..2] != VERSION {
            return Err(format!("stored credential `{name}` is not a sealed value"));
        }
        let id = &sealed[2..6];
        let (key, stale) = match (&self.key, &self.old) {
            (Some(k), _) if k.id == id => (k, false),
            (_, Some(k)) if k.id == id => (k, true),
            (None, _) => {
                return Err(format!(
                    "stored credential `{name}` cannot be opened: set SLUICE_CREDENTIALS_KEY to the key it was stored with"
                ));
            }
            _ => {
                return Err(format!(
                    "stored credential `{name}` was sealed with another key than SLUICE_CREDENTIALS_KEY (and SLUICE_CREDENTIALS_OLD_KEY)"
                ));
            }
        };
        let value = key
            .cipher
            .decrypt(
                XNonce::from_slice(&sealed[6..30]),
                Payload {
                    msg: &sealed[30..],
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| format!("stored credential `{name}` does not open: it was altered"))?;
        Ok(Opened {
            value: String::from_utf8(value)
                .map_err(|_| format!("stored credential `{name}` is not text"))?,
            stale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_name() {
        let vault = Vault::with_key(&[7u8; 32]).unwrap();
        let sealed = vault.seal("stored:erp.password", "hunter2-secret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"hunter"));
        assert_eq!(
            vault.open("stored:erp.password", &sealed).unwrap().value,
            "hunter2-secret"
        );
        // Bound to its name: moved to another credential, it does not open.
        let e = vault.open("stored:other.password", &sealed).err().unwrap();
        assert!(e.contains("altered"), "{e}");
        // Another key: refused, naming the variable.
        let other = Vault::with_key(&[8u8; 32]).unwrap();
        let e = other.open("stored:erp.password", &sealed).err().unwrap();
        assert!(e.contains("another key"), "{e}");
        // Rotation: the old key still opens it, and says to seal it again.
        let rotated = Vault {
            key: Some(Key::new(&[8u8; 32], "k").unwrap()),
            old: Some(Key::new(&[7u8; 32], "k").unwrap()),
        };
        let opened = rotated.open("stored:erp.password", &sealed).unwrap();
        assert!(opened.stale);
        assert_eq!(opened.value, "hunter2-secret");
        // No key: sealing says what to set.
        let e = Vault::default().seal("n", "v").err().unwrap();
        assert!(e.contains("SLUICE_CREDENTIALS_KEY"), "{e}");
        assert!(Key::new(&[1u8; 16], "SLUICE_CREDENTIALS_KEY").is_err());
    }
}
