//! One retry policy for the whole SDK: exponential backoff with jitter.
//!
//! [`Backoff`] says how long to wait between attempts and when to stop;
//! [`retry`] runs an async operation under it. Only errors whose
//! [`Error::is_retryable`] is true are retried (HTTP 408/429/5xx, network
//! failures, timeouts, dropped connections); anything else is returned at
//! once, unchanged. A peer's `Retry-After` ([`Error::retry_after`]) is
//! honoured, and every retry emits one `WARN` [`tracing`] event with target
//! `hypersdk_core::retry`.
//!
//! The delay before retry *n* (n = 1 for the first retry) is
//! `min(initial × multiplierⁿ⁻¹, max_delay)`, shortened at random by up to
//! `jitter` of itself so that many clients failing together do not retry in
//! lockstep, and lengthened to the peer's `Retry-After` when that is longer.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use hypersdk_core::retry::{retry, Backoff};
//! use hypersdk_core::Error;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> hypersdk_core::Result<()> {
//! let backoff = Backoff::default()
//!     .with_initial(Duration::from_millis(200))
//!     .with_max_attempts(Some(5));
//! let calls = AtomicU32::new(0);
//! let body = retry(&backoff, "GET https://esxi.example/disk-0.vmdk", |attempt| {
//!     calls.fetch_add(1, Ordering::Relaxed);
//!     async move {
//!         if attempt < 3 {
//!             // A 503 is retryable; a 404 would be returned at once.
//!             Err(Error::from_http_status("GET", "https://esxi.example/disk-0.vmdk", 503, None, "busy"))
//!         } else {
//!             Ok("bytes")
//!         }
//!     }
//! })
//! .await?;
//! assert_eq!(body, "bytes");
//! assert_eq!(calls.load(Ordering::Relaxed), 3);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How long to wait between attempts of a failing operation, and when to
/// stop.
///
/// Fields are public so a policy can be read and adjusted in place; build
/// one with [`Backoff::default`] and the `with_*` methods. [`retry`] checks
/// it with [`Backoff::validate`] before the first attempt.
///
/// Serialized (for configuration files) with durations in milliseconds:
///
/// ```json
/// {"initial_ms": 500, "multiplier": 1.5, "jitter": 0.5,
///  "max_delay_ms": 120000, "max_attempts": 10, "deadline_ms": null}
/// ```
///
/// Missing fields take their default; `max_attempts: null` means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Backoff {
    /// Delay before the first retry. Default 500 ms.
    #[serde(rename = "initial_ms", with = "millis")]
    pub initial: Duration,
    /// Factor by which the delay grows after each retry; at least 1.
    /// Default 1.5.
    pub multiplier: f64,
    /// Fraction of each delay, between 0 and 1, that may be taken off at
    /// random: with jitter `j` the delay is drawn uniformly from
    /// `[d × (1 − j), d]`. Default 0.5; 0 makes delays exact.
    pub jitter: f64,
    /// Longest delay between two attempts (before `Retry-After`, which may
    /// ask for longer). Default 2 minutes.
    #[serde(rename = "max_delay_ms", with = "millis")]
    pub max_delay: Duration,
    /// Most attempts in total, the first included; `None` retries without
    /// limit (until the deadline, if any). Default `Some(10)`.
    pub max_attempts: Option<u32>,
    /// Time from the first attempt after which no new attempt starts.
    /// An attempt already running is not interrupted: give each request
    /// its own timeout. Default `None` (no deadline).
    #[serde(rename = "deadline_ms", with = "opt_millis")]
    pub deadline: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            multiplier: 1.5,
            jitter: 0.5,
            max_delay: Duration::from_secs(120),
            max_attempts: Some(10),
            deadline: None,
        }
    }
}

impl Backoff {
    /// A policy that makes one attempt and never retries.
    pub fn none() -> Self {
        Backoff::default().with_max_attempts(Some(1))
    }

    /// A policy that retries without limit (no attempt limit, no deadline),
    /// for transfers that must survive any outage the caller is willing to
    /// wait out. Cancel it by dropping the future.
    pub fn unlimited() -> Self {
        Backoff::default().with_max_attempts(None)
    }

    /// Sets [`Backoff::initial`].
    pub fn with_initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }

    /// Sets [`Backoff::multiplier`].
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }

    /// Sets [`Backoff::jitter`].
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets [`Backoff::max_delay`].
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Sets [`Backoff::max_attempts`] (`None` = unlimited).
    pub fn with_max_attempts(mut self, max_attempts: Option<u32>) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Sets [`Backoff::deadline`] (`None` = none).
    pub fn with_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Checks that the policy makes sense: `multiplier` finite and ≥ 1,
    /// `jitter` within `[0, 1]`, `max_delay` ≥ `initial`, and
    /// `max_attempts` not `Some(0)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(Error::invalid_input(format!(
                "backoff multiplier must be a finite number >= 1, got {}",
                self.multiplier
            )));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::invalid_input(format!(
                "backoff jitter must be between 0 and 1, got {}",
                self.jitter
            )));
        }
        if self.max_delay < self.initial {
            return Err(Error::invalid_input(format!(
                "backoff max_delay ({:?}) is shorter than initial ({:?})",
                self.max_delay, self.initial
            )));
        }
        if self.max_attempts == Some(0) {
            return Err(Error::invalid_input(
                "backoff max_attempts must be at least 1 (None means unlimited)",
            ));
        }
        Ok(())
    }

    /// The delay before retry number `retry` (1 for the first retry), before
    /// jitter: `min(initial × multiplier^(retry − 1), max_delay)`.
    ///
    /// Never overflows: any retry number gives at most `max_delay`.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let cap = self.max_delay.as_secs_f64();
        let grown = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        if grown.is_nan() || grown >= cap {
            self.max_delay
        } else {
            Duration::try_from_secs_f64(grown).unwrap_or(self.max_delay)
        }
    }

    /// The delay before retry number `retry`, with jitter applied: drawn
    /// uniformly from `[base × (1 − jitter), base]` where `base` is
    /// [`Backoff::base_delay`].
    pub fn jittered_delay(&self, retry: u32) -> Duration {
        let base = self.base_delay(retry);
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || base.is_zero() {
            return base;
        }
        let factor = 1.0 - jitter * rand::rng().random_range(0.0..=1.0);
        base.mul_f64(factor)
    }

    /// Decides what to do after attempt number `attempts` (1 for the first)
    /// failed with `error`, `elapsed` after the first attempt started.
    ///
    /// Returns the delay to sleep before the next attempt, or `None` to give
    /// up: when the error is not retryable, when `max_attempts` attempts
    /// were made, or when the next attempt could not start before the
    /// deadline (including a `Retry-After` that points past it).
    ///
    /// [`retry`] is built on this; use it directly where an operation cannot
    /// be written as a closure, e.g. resuming a body stream in place.
    pub fn next_delay(&self, attempts: u32, elapsed: Duration, error: &Error) -> Option<Duration> {
        if !error.is_retryable() {
            return None;
        }
        if self.max_attempts.is_some_and(|max| attempts >= max) {
            return None;
        }
        let mut delay = self.jittered_delay(attempts);
        if let Some(asked) = error.retry_after() {
            delay = delay.max(asked);
        }
        if self
            .deadline
            .is_some_and(|deadline| elapsed.saturating_add(delay) > deadline)
        {
            return None;
        }
        Some(delay)
    }
}

/// Runs `attempt` until it succeeds or `backoff` says to stop.
///
/// `attempt` is called with the attempt number (1 for the first call) and
/// returns a fresh future each time. `operation` names what is being done
/// (e.g. `"GET https://host/disk.vmdk"`, with no credentials in it) for the
/// tracing events and the final error.
///
/// Sleeps use tokio's timer, so this needs a tokio runtime with time
/// enabled, and tests can run it with paused time.
///
/// # Errors
///
/// - [`Error::InvalidInput`] if `backoff` fails [`Backoff::validate`]
///   (before any attempt);
/// - the error itself, unchanged, when it is not retryable or when no retry
///   was made (for example `max_attempts` is 1);
/// - [`Error::RetriesExhausted`] with the attempt count, the elapsed time
///   and the last error as source, when at least one retry was made and the
///   policy then gave up. Its [`Error::kind`] is the last error's kind and
///   it is itself not retryable, so nested retry loops do not multiply.
///
/// # Cancellation
///
/// Dropping the returned future cancels the attempt in flight or the sleep
/// between attempts; nothing else is left behind by the retry loop itself.
pub async fn retry<T, F, Fut>(backoff: &Backoff, operation: &str, mut attempt: F) -> Result<T>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    backoff.validate()?;
    let started = tokio::time::Instant::now();
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        let error = match attempt(attempts).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let elapsed = started.elapsed();
        let Some(delay) = backoff.next_delay(attempts, elapsed, &error) else {
            if attempts == 1 || !error.is_retryable() {
                return Err(error);
            }
            return Err(Error::RetriesExhausted {
                operation: operation.to_owned(),
                attempts,
                elapsed,
                last: Box::new(error),
            });
        };
        tracing::warn!(
            target: "hypersdk_core::retry",
            operation,
            attempt = attempts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %error,
            "retrying after a transient failure"
        );
        tokio::time::sleep(delay).await;
    }
}

/// `Duration` as integer milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// `Option<Duration>` as integer milliseconds or `null`.
mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|ms| ms.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use super::*;
    use crate::ErrorKind;

    fn unavailable() -> Error {
        Error::from_http_status("GET", "https://h.example/x", 503, None, "busy")
    }

    fn exact(initial_ms: u64) -> Backoff {
        Backoff::default()
            .with_initial(Duration::from_millis(initial_ms))
            .with_jitter(0.0)
    }

    /// Runs `retry` with an operation failing with `fail(attempt)` until
    /// `succeed_at` (never if `None`); returns the result, the number of
    /// calls and the (paused) time it took.
    async fn run(
        backoff: &Backoff,
        succeed_at: Option<u32>,
        fail: impl Fn(u32) -> Error,
    ) -> (Result<u32>, u32, Duration) {
        let start = Instant::now();
        let mut calls = 0;
        let result = retry(backoff, "test op", |attempt| {
            calls += 1;
            let outcome = if succeed_at.is_some_and(|n| attempt >= n) {
                Ok(attempt)
            } else {
                Err(fail(attempt))
            };
            async move { outcome }
        })
        .await;
        (result, calls, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn success_first_time_does_not_sleep() {
        let (r, calls, took) = run(&Backoff::default(), Some(1), |_| unavailable()).await;
        assert_eq!(r.unwrap(), 1);
        assert_eq!(calls, 1);
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_error_is_returned_after_one_call() {
        for err in [
            || Error::from_http_status("GET", "https://h/x", 404, None, "gone"),
            || Error::from_http_status("GET", "https://h/x", 401, None, "no"),
            || Error::invalid_input("bad"),
            || Error::integrity("disk.vmdk", "sha256:00", "sha256:11"),
        ] {
            let (r, calls, took) = run(&Backoff::unlimited(), None, |_| err()).await;
            let e = r.unwrap_err();
            assert_eq!(calls, 1);
            assert_eq!(took, Duration::ZERO);
            assert!(!matches!(e, Error::RetriesExhausted { .. }), "{e:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn non_retryable_after_retries_is_returned_unwrapped() {
        let (r, calls, _) = run(&exact(10), None, |attempt| {
            if attempt < 3 {
                unavailable()
            } else {
                Error::from_http_status("GET", "https://h/x", 404, None, "gone")
            }
        })
        .await;
        assert_eq!(calls, 3);
        assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound);
    }

    #[tokio::test(start_paused = true)]
    async fn respects_max_attempts() {
        let backoff = exact(100).with_max_attempts(Some(4));
        let (r, calls, took) = run(&backoff, None, |_| unavailable()).await;
        assert_eq!(calls, 4);
        // 100 + 150 + 225 ms of sleeps, none after the last attempt.
        assert_eq!(took, Duration::from_millis(475));
        match r.unwrap_err() {
            Error::RetriesExhausted {
                operation,
                attempts,
                elapsed,
                last,
            } => {
                assert_eq!(operation, "test op");
                assert_eq!(attempts, 4);
                assert_eq!(elapsed, Duration::from_millis(475));
                assert_eq!(last.kind(), ErrorKind::Unavailable);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn single_attempt_returns_the_raw_error() {
        let (r, calls, _) = run(&Backoff::none(), None, |_| unavailable()).await;
        assert_eq!(calls, 1);
        assert!(matches!(
            r.unwrap_err(),
            Error::HttpStatus { status: 503, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_retries_until_success() {
        let backoff = Backoff::unlimited()
            .with_initial(Duration::from_millis(1))
            .with_max_delay(Duration::from_secs(1));
        let (r, calls, took) = run(&backoff, Some(1000), |_| unavailable()).await;
        assert_eq!(r.unwrap(), 1000);
        assert_eq!(calls, 1000);
        // Capped at one second per wait, so well under 1000 s.
        assert!(took < Duration::from_secs(1000), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_stops_new_attempts() {
        let backoff = Backoff::unlimited()
            .with_initial(Duration::from_secs(1))
            .with_multiplier(1.0)
            .with_jitter(0.0)
            .with_deadline(Some(Duration::from_millis(3500)));
        let (r, calls, took) = run(&backoff, None, |_| unavailable()).await;
        // Attempts at 0, 1, 2, 3 s; the next would start at 4 s > 3.5 s.
        assert_eq!(calls, 4);
        assert_eq!(took, Duration::from_secs(3));
        assert!(matches!(
            r.unwrap_err(),
            Error::RetriesExhausted { attempts: 4, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_counts_time_spent_in_attempts() {
        let backoff = Backoff::unlimited()
            .with_initial(Duration::from_millis(100))
            .with_jitter(0.0)
            .with_deadline(Some(Duration::from_secs(10)));
        let start = Instant::now();
        let mut calls = 0;
        let r: Result<()> = retry(&backoff, "slow", |_| {
            calls += 1;
            async {
                tokio::time::sleep(Duration::from_secs(4)).await;
                Err(unavailable())
            }
        })
        .await;
        // 4 s, +0.1 s, 4 s, +0.15 s, 4 s: the third attempt ends at 12.25 s.
        assert_eq!(calls, 3);
        assert_eq!(start.elapsed(), Duration::from_millis(12_250));
        assert!(r.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after() {
        let busy = || {
            Error::from_http_status(
                "PUT",
                "https://h/x",
                429,
                Some(Duration::from_secs(30)),
                "slow down",
            )
        };
        let (r, calls, took) = run(&exact(100), Some(2), |_| busy()).await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(calls, 2);
        assert_eq!(took, Duration::from_secs(30));

        // A Retry-After beyond the deadline gives up at once.
        let short = exact(100).with_deadline(Some(Duration::from_secs(5)));
        let (r, calls, took) = run(&short, Some(2), |_| busy()).await;
        assert_eq!(calls, 1);
        assert_eq!(took, Duration::ZERO);
        assert!(matches!(
            r.unwrap_err(),
            Error::HttpStatus { status: 429, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_policy_makes_no_attempt() {
        let bad = Backoff::default().with_max_attempts(Some(0));
        let (r, calls, _) = run(&bad, Some(1), |_| unavailable()).await;
        assert_eq!(calls, 0);
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn delays_grow_and_cap_without_overflow() {
        let b = Backoff::default()
            .with_initial(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2));
        assert_eq!(b.base_delay(1), Duration::from_millis(100));
        assert_eq!(b.base_delay(2), Duration::from_millis(150));
        assert_eq!(b.base_delay(3), Duration::from_millis(225));
        let mut previous = Duration::ZERO;
        for n in 1..200 {
            let d = b.base_delay(n);
            assert!(d >= previous && d <= b.max_delay);
            previous = d;
        }
        assert_eq!(b.base_delay(u32::MAX), Duration::from_secs(2));
        let huge = b.clone().with_multiplier(1e300);
        assert_eq!(huge.base_delay(50), Duration::from_secs(2));
        let zero = b.with_initial(Duration::ZERO);
        assert_eq!(zero.base_delay(100), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let b = Backoff::default()
            .with_initial(Duration::from_secs(1))
            .with_multiplier(1.0)
            .with_jitter(0.25);
        let samples: Vec<Duration> = (0..2000).map(|_| b.jittered_delay(3)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_millis(750) && *d <= Duration::from_secs(1))
        );
        // Not constant: jitter actually spreads the delays.
        let min = samples.iter().min().unwrap();
        let max = samples.iter().max().unwrap();
        assert!(*max - *min > Duration::from_millis(100), "{min:?}..{max:?}");
        assert_eq!(b.with_jitter(0.0).jittered_delay(3), Duration::from_secs(1));
    }

    #[test]
    fn validate_names_the_field() {
        let cases = [
            (Backoff::default().with_multiplier(0.5), "multiplier"),
            (Backoff::default().with_multiplier(f64::NAN), "multiplier"),
            (Backoff::default().with_jitter(1.5), "jitter"),
            (Backoff::default().with_jitter(-0.1), "jitter"),
            (
                Backoff::default().with_max_delay(Duration::from_millis(1)),
                "max_delay",
            ),
            (
                Backoff::default().with_max_attempts(Some(0)),
                "max_attempts",
            ),
        ];
        for (b, field) in cases {
            let e = b.validate().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains(field), "{e}");
        }
        Backoff::default().validate().unwrap();
        Backoff::unlimited().validate().unwrap();
        Backoff::none().validate().unwrap();
    }

    #[test]
    fn defaults_and_serde() {
        let b = Backoff::default();
        assert_eq!(b.multiplier, 1.5);
        assert_eq!(b.max_delay, Duration::from_secs(120));
        let json = serde_json::to_value(&b).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "initial_ms": 500, "multiplier": 1.5, "jitter": 0.5,
                "max_delay_ms": 120000, "max_attempts": 10, "deadline_ms": null
            })
        );
        let back: Backoff = serde_json::from_value(json).unwrap();
        assert_eq!(back, b);
        let partial: Backoff =
            serde_json::from_str(r#"{"max_attempts": null, "deadline_ms": 60000}"#).unwrap();
        assert_eq!(partial.max_attempts, None);
        assert_eq!(partial.deadline, Some(Duration::from_secs(60)));
        assert_eq!(partial.initial, Duration::from_millis(500));
        assert!(serde_json::from_str::<Backoff>(r#"{"initial": 5}"#).is_err());
    }

    proptest::proptest! {
        /// For any valid policy: a non-retryable error is never retried,
        /// `max_attempts` and the deadline are never exceeded, and a delay
        /// stays within `[base × (1 − jitter), max(max_delay, Retry-After)]`.
        #[test]
        fn next_delay_respects_the_policy(
            initial_ms in 0u64..10_000,
            extra_ms in 0u64..200_000,
            multiplier in 1.0f64..10.0,
            jitter in 0.0f64..=1.0,
            max_attempts in proptest::option::of(1u32..50),
            deadline_ms in proptest::option::of(0u64..1_000_000),
            attempts in 1u32..100,
            elapsed_ms in 0u64..1_000_000,
            retry_after_s in proptest::option::of(0u64..600),
            retryable in proptest::bool::ANY,
        ) {
            let b = Backoff::default()
                .with_initial(Duration::from_millis(initial_ms))
                .with_max_delay(Duration::from_millis(initial_ms + extra_ms))
                .with_multiplier(multiplier)
                .with_jitter(jitter)
                .with_max_attempts(max_attempts)
                .with_deadline(deadline_ms.map(Duration::from_millis));
            b.validate().unwrap();
            let retry_after = retry_after_s.map(Duration::from_secs);
            let status = if retryable { 503 } else { 404 };
            let err = Error::from_http_status("GET", "https://h/x", status, retry_after, "");
            let elapsed = Duration::from_millis(elapsed_ms);
            match b.next_delay(attempts, elapsed, &err) {
                None => {
                    let capped = max_attempts.is_some_and(|m| attempts >= m);
                    let late = deadline_ms.is_some();
                    proptest::prop_assert!(!retryable || capped || late);
                }
                Some(d) => {
                    proptest::prop_assert!(retryable);
                    proptest::prop_assert!(max_attempts.is_none_or(|m| attempts < m));
                    if let Some(deadline) = b.deadline {
                        proptest::prop_assert!(elapsed + d <= deadline);
                    }
                    let upper = b.max_delay.max(retry_after.unwrap_or_default());
                    proptest::prop_assert!(d <= upper);
                    let lower = b.base_delay(attempts).mul_f64(1.0 - jitter);
                    proptest::prop_assert!(d + Duration::from_micros(1) >= lower);
                    if let Some(asked) = retry_after {
                        proptest::prop_assert!(d >= asked);
                    }
                }
            }
        }
    }

    /// Counts `WARN` events from this module.
    struct CountRetries(Arc<AtomicUsize>);

    impl tracing::Subscriber for CountRetries {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let meta = event.metadata();
            if meta.target() == "hypersdk_core::retry" && *meta.level() == tracing::Level::WARN {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[tokio::test(start_paused = true)]
    async fn one_tracing_event_per_retry() {
        let count = Arc::new(AtomicUsize::new(0));
        let _guard = tracing::dispatcher::set_default(&tracing::Dispatch::new(CountRetries(
            Arc::clone(&count),
        )));
        let (r, calls, _) = run(&exact(10), Some(4), |_| unavailable()).await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(calls, 4);
        assert_eq!(count.load(Ordering::SeqCst), 3);

        count.store(0, Ordering::SeqCst);
        let (_, calls, _) = run(&exact(10), None, |_| Error::invalid_input("x")).await;
        assert_eq!(calls, 1);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_future_cancels_the_loop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let backoff = Backoff::unlimited().with_initial(Duration::from_secs(1));
        let task = tokio::spawn(async move {
            retry(&backoff, "op", |_| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>(unavailable()) }
            })
            .await
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        let after_abort = calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(calls.load(Ordering::SeqCst), after_abort);
    }
}
