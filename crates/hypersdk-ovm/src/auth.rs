//! The exporter's JWT: reading its `exp`, and the token cache.
//!
//! The exporter issues an HS256 JWT with `{"user", "exp", "iss"}` and has no
//! refresh endpoint. The client decodes the payload without verifying it
//! (only the exporter holds the secret) to learn `exp`, reuses the token
//! until shortly before then, and logs in again once when a private route
//! answers `401`. Concurrent callers that find the token stale share one
//! login.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// Longest margin kept before `exp`: a token is renewed this long before it
/// expires (less for short-lived tokens, see [`renew_margin`]).
pub(crate) const MAX_RENEW_MARGIN: Duration = Duration::from_secs(300);

/// The `exp` claim (Unix seconds) of a JWT, read without verifying the
/// signature. `None` when the token is not a JWT or has no numeric `exp`.
///
/// ```
/// # use base64::Engine;
/// let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
/// let jwt = format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(r#"{"user":"admin","exp":1700000000}"#));
/// assert_eq!(hypersdk_ovm::auth::jwt_expiry(&jwt), Some(1700000000));
/// assert_eq!(hypersdk_ovm::auth::jwt_expiry("not-a-jwt"), None);
/// ```
pub fn jwt_expiry(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// How long before `exp` a token of `lifetime` is renewed: a fifth of its
/// life, at most [`MAX_RENEW_MARGIN`].
pub(crate) fn renew_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(MAX_RENEW_MARGIN)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// A token and when to stop using it.
#[derive(Clone)]
pub(crate) struct Token {
    /// The JWT.
    pub(crate) value: String,
    /// Unix time (as a duration) after which the token is renewed before
    /// use; `None` when the token carries no `exp` (used until a `401`).
    pub(crate) renew_at: Option<Duration>,
    /// Bumped on every login, so a caller can tell whether the token it
    /// used is still the current one.
    pub(crate) generation: u64,
}

impl Token {
    /// A token just received: `renew_at` from its `exp`.
    ///
    /// A token whose `exp` has already passed by this machine's clock when
    /// it arrives says that the clocks disagree (the exporter just issued
    /// it): it is then used until a `401`, like a token without `exp`,
    /// rather than logging in again before every request.
    pub(crate) fn new(value: String, generation: u64) -> Token {
        let now = unix_now();
        let renew_at = jwt_expiry(&value).and_then(|exp| {
            let exp = Duration::from_secs(exp);
            if exp <= now {
                tracing::warn!(
                    exp = exp.as_secs(),
                    now = now.as_secs(),
                    "the OVM exporter issued a token that is already expired by this machine's \
                     clock: the clocks disagree; the token is used until it is refused"
                );
                return None;
            }
            let lifetime = exp - now;
            Some(exp.saturating_sub(renew_margin(lifetime)))
        });
        Token {
            value,
            renew_at,
            generation,
        }
    }

    /// Whether the token may still be sent.
    pub(crate) fn is_fresh(&self) -> bool {
        self.renew_at.is_none_or(|at| unix_now() < at)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"***")
            .field("renew_at", &self.renew_at)
            .field("generation", &self.generation)
            .finish()
    }
}

/// The current token, shared by every clone of a client.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    current: Mutex<Option<Token>>,
    /// Held while logging in, so concurrent callers share one login.
    pub(crate) login_lock: tokio::sync::Mutex<()>,
    generation: Mutex<u64>,
}

impl TokenCache {
    /// The current token if it may still be sent.
    pub(crate) fn fresh(&self) -> Option<Token> {
        let guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|t| t.is_fresh()).cloned()
    }

    /// The generation of the current token (0 before any login).
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new token and returns it.
    pub(crate) fn store(&self, value: String) -> Token {
        let generation = {
            let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            *g += 1;
            *g
        };
        let token = Token::new(value, generation);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        token
    }

    /// Drops the current token if it is still the one of `generation` (a
    /// `401` came back for it); a newer token is kept.
    pub(crate) fn invalidate(&self, generation: u64) {
        let mut guard = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|t| t.generation == generation) {
            *guard = None;
        }
    }

    /// Whether a token is cached (fresh or not).
    pub(crate) fn has_token(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(claims)
        )
    }

    #[test]
    fn expiry_forms() {
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":12}"#)), Some(12));
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":12.7}"#)), Some(12));
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":"12"}"#)), None);
        assert_eq!(jwt_expiry(&jwt(r#"{"user":"a"}"#)), None);
        assert_eq!(jwt_expiry("a.b"), None);
        assert_eq!(jwt_expiry("a.b.c.d"), None);
        assert_eq!(jwt_expiry("a.!!.c"), None);
        // Padded payloads are accepted too.
        let padded = format!(
            "x.{}.y",
            base64::engine::general_purpose::URL_SAFE.encode(r#"{"exp":5}"#)
        );
        assert_eq!(jwt_expiry(&padded), Some(5));
    }

    #[test]
    fn freshness_and_margin() {
        let now = unix_now().as_secs();
        let long = Token::new(jwt(&format!(r#"{{"exp":{}}}"#, now + 7 * 86400)), 1);
        assert!(long.is_fresh());
        // Renewed 5 minutes before exp at most.
        let at = long.renew_at.unwrap().as_secs();
        assert!(at >= now + 7 * 86400 - 300 && at < now + 7 * 86400);
        // Expired on arrival: the clocks disagree; used until a 401 rather
        // than renewed before every request.
        let skewed = Token::new(jwt(&format!(r#"{{"exp":{}}}"#, now.saturating_sub(1))), 2);
        assert!(skewed.is_fresh() && skewed.renew_at.is_none());
        // A token that expires while cached is renewed.
        let stale = Token {
            renew_at: Some(Duration::from_secs(now.saturating_sub(1))),
            ..long.clone()
        };
        assert!(!stale.is_fresh());
        let no_exp = Token::new("opaque".into(), 3);
        assert!(no_exp.is_fresh());
        assert_eq!(
            renew_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(renew_margin(Duration::from_secs(86400)), MAX_RENEW_MARGIN);
        assert!(!format!("{long:?}").contains(&long.value));
    }

    #[test]
    fn cache_invalidates_only_its_generation() {
        let c = TokenCache::default();
        assert!(c.fresh().is_none() && !c.has_token());
        let t1 = c.store("one".into());
        let t2 = c.store("two".into());
        assert_eq!((t1.generation, t2.generation), (1, 2));
        c.invalidate(1);
        assert_eq!(c.fresh().unwrap().value, "two");
        c.invalidate(2);
        assert!(c.fresh().is_none());
        assert_eq!(c.generation(), 2);
    }
}
