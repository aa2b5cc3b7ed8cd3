//! The exporter's JWTs: HS256 tokens with the claims `{"user", "exp",
//! "iss": "gopherbin"}`, checked the way jwt-go v3 checks them.
//!
//! A token is accepted when it has three dot-separated base64url segments
//! (padding optional); the header is a JSON object whose `alg` is HS256,
//! HS384 or HS512; the claims are a JSON object (or `null`) whose `exp`,
//! `iat` and `nbf` are integers and whose `user`, `aud`, `jti`, `iss` and
//! `sub` are strings (key case ignored, as Go's decoder does; anything
//! after the first JSON value is ignored); `now <= exp`, `now >= iat` and
//! `now >= nbf` where set (non-zero); and the signature is the HMAC of
//! `header.claims` under the secret with the header's hash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Sha256, Sha384, Sha512};

/// Go's `base64.URLEncoding` after jwt-go re-adds the padding: lenient
/// about trailing bits.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The issuer claim the exporter writes (copied from another project).
pub(crate) const ISSUER: &str = "gopherbin";

/// Signs a token for `user` expiring at `exp` (Unix seconds).
pub(crate) fn issue(secret: &[u8], user: &str, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = serde_json::json!({ "user": user, "exp": exp, "iss": ISSUER });
    // serde_json sorts object keys; write them in the Go struct's order.
    let claims = format!(
        r#"{{"user":{},"exp":{},"iss":{}}}"#,
        claims["user"], claims["exp"], claims["iss"]
    );
    let claims = URL_SAFE_NO_PAD.encode(claims.as_bytes());
    let signing_input = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(hmac(Alg::Hs256, secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

#[derive(Clone, Copy)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
}

fn hmac(alg: Alg, secret: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(secret: &[u8], data: &[u8]) -> Vec<u8> {
        match <M as KeyInit>::new_from_slice(secret) {
            Ok(mut mac) => {
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes keys of any length; an empty result never verifies.
            Err(_) => Vec::new(),
        }
    }
    match alg {
        Alg::Hs256 => run::<Hmac<Sha256>>(secret, data),
        Alg::Hs384 => run::<Hmac<Sha384>>(secret, data),
        Alg::Hs512 => run::<Hmac<Sha512>>(secret, data),
    }
}

/// jwt-go's `DecodeSegment`: base64url with or without padding.
fn decode_segment(segment: &str) -> Option<Vec<u8>> {
    let mut padded = segment.to_owned();
    while !padded.len().is_multiple_of(4) {
        padded.push('=');
    }
    DECODER.decode(padded.as_bytes()).ok()
}

/// Checks `token` as the exporter's middleware does, at `now` (Unix
/// seconds). The error says why it was refused (never shown to clients).
pub(crate) fn verify(secret: &[u8], token: &str, now: i64) -> Result<(), &'static str> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("token contains an invalid number of segments");
    };
    let header_json: Value = decode_segment(header)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or("malformed header")?;
    let claims_bytes = decode_segment(claims).ok_or("malformed claims")?;
    let claims_json = serde_json::Deserializer::from_slice(&claims_bytes)
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .ok_or("malformed claims")?;
    let alg = match header_json.get("alg").and_then(Value::as_str) {
        Some("HS256") => Alg::Hs256,
        Some("HS384") => Alg::Hs384,
        Some("HS512") => Alg::Hs512,
        _ => return Err("signing method unavailable or not HMAC"),
    };
    check_claims(&claims_json, now)?;
    let signature = decode_segment(signature).ok_or("malformed signature")?;
    let signing_input = &token[..header.len() + 1 + claims.len()];
    let expected = hmac(alg, secret, signing_input.as_bytes());
    if expected.is_empty() || !constant_time_eq(&expected, &signature) {
        return Err("signature is invalid");
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes the claims like Go's `json.Decoder` into jwt-go's
/// `StandardClaims` plus `user`, then checks the times.
fn check_claims(claims: &Value, now: i64) -> Result<(), &'static str> {
    let object = match claims {
        Value::Null => return Ok(()),
        Value::Object(object) => object,
        _ => return Err("claims are not an object"),
    };
    let (mut exp, mut iat, mut nbf) = (0i64, 0i64, 0i64);
    for (key, value) in object {
        let key = key.to_ascii_lowercase();
        match key.as_str() {
            "exp" | "iat" | "nbf" => {
                let number = match value {
                    Value::Null => continue,
                    Value::Number(n) => n.as_i64().ok_or("time claim is not an int64")?,
                    _ => return Err("time claim is not a number"),
                };
                match key.as_str() {
                    "exp" => exp = number,
                    "iat" => iat = number,
                    _ => nbf = number,
                }
            }
            "user" | "aud" | "jti" | "iss" | "sub"
                if !matches!(value, Value::Null | Value::String(_)) =>
            {
                return Err("string claim is not a string");
            }
            _ => {}
        }
    }
    if exp != 0 && now > exp {
        return Err("token is expired");
    }
    if iat != 0 && now < iat {
        return Err("token used before issued");
    }
    if nbf != 0 && now < nbf {
        return Err("token is not valid yet");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";

    fn forge(alg: &str, claims: &str, secret: &[u8]) -> String {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let claims = URL_SAFE_NO_PAD.encode(claims);
        let input = format!("{header}.{claims}");
        let alg = match alg {
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            _ => Alg::Hs256,
        };
        let sig = URL_SAFE_NO_PAD.encode(hmac(alg, secret, input.as_bytes()));
        format!("{input}.{sig}")
    }

    #[test]
    fn issued_tokens_have_the_exporter_claims() {
        let token = issue(SECRET, "admin", 2_000_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
            br#"{"alg":"HS256","typ":"JWT"}"#
        );
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[1]).unwrap(),
            br#"{"user":"admin","exp":2000000000,"iss":"gopherbin"}"#
        );
        assert_eq!(verify(SECRET, &token, 2_000_000_000), Ok(()));
        assert!(verify(SECRET, &token, 2_000_000_001).is_err());
        assert!(verify(b"other", &token, 0).is_err());
        assert!(verify(SECRET, &format!("{token}x"), 0).is_err());
        assert!(verify(SECRET, &token[..token.len() - 2], 0).is_err());
    }

    #[test]
    fn jwt_go_acceptance_rules() {
        let now = 1_000;
        assert_eq!(
            verify(SECRET, &forge("HS384", r#"{"exp":1000}"#, SECRET), now),
            Ok(())
        );
        assert_eq!(
            verify(SECRET, &forge("HS512", r#"{}"#, SECRET), now),
            Ok(())
        );
        assert_eq!(verify(SECRET, &forge("HS256", "null", SECRET), now), Ok(()));
        assert_eq!(
            verify(
                SECRET,
                &forge("HS256", r#"{"EXP":2000} trailing"#, SECRET),
                now
            ),
            Ok(())
        );
        assert!(verify(SECRET, &forge("HS256", r#"{"EXP":999}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("RS256", r#"{}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("none", r#"{}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("HS256", r#"{"exp":"2000"}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("HS256", r#"{"exp":2000.5}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("HS256", r#"{"user":1}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("HS256", r#"{"iat":1001}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("HS256", r#"{"nbf":1001}"#, SECRET), now).is_err());
        assert!(verify(SECRET, &forge("HS256", "[1]", SECRET), now).is_err());
        assert!(verify(SECRET, "a.b", now).is_err());
        assert!(verify(SECRET, "a.b.c.d", now).is_err());
        // A padded signature is accepted too (the signing input is the
        // header and claims exactly as sent).
        let token = forge("HS256", r#"{"exp":1000}"#, SECRET);
        let mut padded = token.clone();
        while !padded.rsplit('.').next().unwrap().len().is_multiple_of(4) {
            padded.push('=');
        }
        assert_ne!(padded, token);
        assert_eq!(verify(SECRET, &padded, now), Ok(()));
    }
}
