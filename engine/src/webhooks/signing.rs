//! Standard Webhooks v1 signatures.
//!
//! A secret is `whsec_` + base64 of the key bytes. The signature of a message
//! is `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")). During a
//! secret rotation both the new and the old secret sign, separated by a space.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

pub use crate::store::{SECRET_PREFIX, Secret, SecretError};

impl Secret {
    /// 32 random bytes.
    pub fn generate() -> Secret {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Secret::from_key(key)
    }

    /// `v1,<base64 signature>` of a message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key())
            .expect("HMAC takes keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header value: one signature per secret, space-separated.
pub fn signature_header(secrets: &[&Secret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How far an inbound message's `webhook-timestamp` may be from now.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// Why an inbound signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A `webhook-*` header is missing.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    #[error("`webhook-timestamp` is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is too old or too far in the future (replay protection).
    #[error("`webhook-timestamp` is {0} s away from the server's clock (tolerance 300 s)")]
    Stale(i64),
    /// No `v1,` signature matches.
    #[error("no signature in `webhook-signature` matches the body")]
    Mismatch,
}

impl Secret {
    /// Checks a `webhook-signature` header (space-separated `v1,<base64>`
    /// entries) against a message, in constant time per entry; `now` in
    /// seconds.
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        if (now - ts).abs() > TIMESTAMP_TOLERANCE_SECS {
            return Err(VerifyError::Stale(now - ts));
        }
        for entry in signatures.split_whitespace() {
            let Some(b64) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(given) = STANDARD.decode(b64) else {
                continue;
            };
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key())
                .expect("HMAC takes keys of any length");
            mac.update(msg_id.as_bytes());
            mac.update(b".");
            mac.update(ts.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            if mac.verify_slice(&given).is_ok() {
                return Ok(());
            }
        }
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vector from the Standard Webhooks reference libraries.
    #[test]
    fn verify_accepts_a_matching_signature_and_refuses_others() {
        let s = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"a":1}"#;
        let sig = s.sign("msg_1", 1_000, body);
        assert_eq!(
            s.verify("msg_1", "1000", &format!("v1,bogus {sig}"), body, 1_010),
            Ok(())
        );
        assert_eq!(
            s.verify("msg_1", "1000", &sig, b"{}", 1_010),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            s.verify("msg_2", "1000", &sig, body, 1_010),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            s.verify("msg_1", "1000", &sig, body, 2_000),
            Err(VerifyError::Stale(1_000))
        );
        assert_eq!(
            s.verify("msg_1", "soon", &sig, body, 1_000),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let s = Secret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            s.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    /// Test vector from the Standard Webhooks specification.
    #[test]
    fn signs_the_specification_example() {
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn generated_secrets_round_trip_and_bad_ones_are_refused() {
        let s = Secret::generate();
        assert_eq!(Secret::parse(&s.to_text()).unwrap(), s);
        assert!(
            Secret::parse("abc")
                .unwrap_err()
                .to_string()
                .contains("must start with `whsec_`")
        );
        assert!(
            Secret::parse("whsec_!!!")
                .unwrap_err()
                .to_string()
                .contains("not base64")
        );
    }

    #[test]
    fn rotation_sends_both_signatures() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let h = signature_header(&[&a, &b], "msg_1", 1, b"{}");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(
            parts,
            vec![a.sign("msg_1", 1, b"{}"), b.sign("msg_1", 1, b"{}")]
        );
    }
}
