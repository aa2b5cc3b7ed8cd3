//! Progress reporting: events, a rate and ETA meter, and sinks.
//!
//! Long operations (exports, transfers, imports) report what they are doing
//! as [`ProgressEvent`]s: a [`Phase`], the item concerned (a disk path or a
//! file name) and bytes done out of a total. They send the events to a
//! [`Progress`] handle, which fans them out to zero or more
//! [`ProgressSink`]s:
//!
//! - [`CallbackSink`] calls a closure;
//! - [`ChannelSink`] feeds a [`ProgressStream`], a [`futures::Stream`] of
//!   events for async consumers;
//! - [`StateFileSink`] keeps a JSON state file in the format of the
//!   virt-v2v wrapper up to date, for consumers that poll a file.
//!
//! A copy loop reports through an [`ItemProgress`] tracker, which throttles
//! the events it sends (by default at most one per 100 ms, plus always the
//! first and the final one) and fills in the transfer rate and the ETA from
//! a [`Meter`].
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use hypersdk_core::progress::{CallbackSink, Outcome, Phase, Progress, StateFileSink};
//!
//! # fn main() -> hypersdk_core::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let state_path = dir.path().join("state.json");
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = Arc::clone(&seen);
//! let progress = Progress::new(CallbackSink::new(move |ev| {
//!     log.lock().unwrap().push(ev.percent());
//! }))
//! .with_sink(StateFileSink::new(&state_path, ["/var/tmp/web01-sda"]).start()?);
//!
//! // A copy loop reports through a tracker: it emits the first event at once,
//! // then at most one event per 100 ms, and always the final one.
//! let disk = progress.item(Phase::Transferring, "/var/tmp/web01-sda", Some(4 << 20));
//! for _ in 0..4 {
//!     disk.add(1 << 20);
//! }
//! progress.finish(Outcome::Succeeded);
//!
//! let seen = seen.lock().unwrap();
//! assert_eq!(seen.first(), Some(&Some(0.0)));
//! assert_eq!(seen.last(), Some(&Some(100.0)));
//!
//! let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
//! assert_eq!(state["disks"][0]["progress"], 100.0);
//! assert_eq!(state["return_code"], 0);
//! assert_eq!(state["finished"], true);
//! assert!(state.get("failed").is_none());
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// The current time for throttling.
///
/// Read through tokio's clock so tests running with paused time (and
/// `tokio::time::advance`) control it; outside a runtime, or when time is
/// not paused, this is [`Instant::now`].
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Locks a mutex, ignoring poisoning: progress state stays usable after a
/// panic elsewhere, and a progress report is never worth a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The stage an operation is in.
///
/// Serialized in `snake_case` (`"transferring"`); [`fmt::Display`] prints the
/// same word. New phases may be added in minor releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    /// Connecting and authenticating to a platform.
    Connecting,
    /// Listing VMs, disks and their properties.
    Discovering,
    /// Taking or removing a snapshot.
    Snapshotting,
    /// Reading a VM's disks out of the source platform.
    Exporting,
    /// Copying bytes between source and target.
    Transferring,
    /// Writing a VM's disks into the target platform.
    Importing,
    /// Converting the guest or a disk format.
    Converting,
    /// Checking what was written (checksums, sizes).
    Verifying,
    /// Releasing leases, removing temporary objects, registering the VM.
    Finalizing,
    /// The operation is over.
    Done,
}

impl Phase {
    /// The phase's name as serialized, e.g. `"transferring"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Discovering => "discovering",
            Phase::Snapshotting => "snapshotting",
            Phase::Exporting => "exporting",
            Phase::Transferring => "transferring",
            Phase::Importing => "importing",
            Phase::Converting => "converting",
            Phase::Verifying => "verifying",
            Phase::Finalizing => "finalizing",
            Phase::Done => "done",
        }
    }

    /// Whether this phase copies disk data ([`Phase::Exporting`],
    /// [`Phase::Transferring`], [`Phase::Importing`]): the phases whose bytes
    /// count as a disk's copy progress in a [`StateFileSink`].
    pub fn moves_bytes(self) -> bool {
        matches!(
            self,
            Phase::Exporting | Phase::Transferring | Phase::Importing
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One progress report.
///
/// Build one with [`ProgressEvent::new`] and the `with_*` methods:
///
/// ```
/// use hypersdk_core::progress::{Phase, ProgressEvent};
///
/// let ev = ProgressEvent::new(Phase::Transferring, 512, Some(2048))
///     .with_item("disk-0.vmdk")
///     .with_index(0, 2);
/// assert_eq!(ev.percent(), Some(25.0));
/// assert!(!ev.is_final());
/// ```
///
/// Serialized with the field names shown; absent optional fields are left
/// out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProgressEvent {
    /// The stage of the operation.
    pub phase: Phase,
    /// The item concerned: a disk path, a file or disk name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// The item's position, from 0, among [`ProgressEvent::item_count`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_index: Option<usize>,
    /// How many items the operation handles in this phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_count: Option<usize>,
    /// Bytes of the item (or of the phase, without an item) done so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to do in total, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// The current rate in bytes per second, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<f64>,
    /// The estimated seconds to completion, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    /// A short human-readable note, e.g. `waiting for the export lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl ProgressEvent {
    /// An event of `phase` with `bytes_done` out of `bytes_total`; pass
    /// `0, None` for a phase that does not count bytes.
    pub fn new(phase: Phase, bytes_done: u64, bytes_total: Option<u64>) -> Self {
        ProgressEvent {
            phase,
            item: None,
            item_index: None,
            item_count: None,
            bytes_done,
            bytes_total,
            bytes_per_sec: None,
            eta_secs: None,
            message: None,
        }
    }

    /// Names the item concerned.
    #[must_use]
    pub fn with_item(mut self, item: impl Into<String>) -> Self {
        self.item = Some(item.into());
        self
    }

    /// Sets the item's position `index` (from 0) among `count` items.
    #[must_use]
    pub fn with_index(mut self, index: usize, count: usize) -> Self {
        self.item_index = Some(index);
        self.item_count = Some(count);
        self
    }

    /// Adds a human-readable note.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Sets the rate in bytes per second (ignored unless finite and ≥ 0).
    #[must_use]
    pub fn with_rate(mut self, bytes_per_sec: f64) -> Self {
        self.bytes_per_sec =
            (bytes_per_sec.is_finite() && bytes_per_sec >= 0.0).then_some(bytes_per_sec);
        self
    }

    /// Sets the estimated time to completion.
    #[must_use]
    pub fn with_eta(mut self, eta: Duration) -> Self {
        self.eta_secs = Some(eta.as_secs_f64());
        self
    }

    /// The estimated time to completion, when known.
    pub fn eta(&self) -> Option<Duration> {
        self.eta_secs
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    }

    /// The part done, from 0.0 to 1.0, when the total is known.
    ///
    /// Clamped to 1.0 when more than the total was done; an empty total
    /// counts as complete.
    pub fn fraction(&self) -> Option<f64> {
        let total = self.bytes_total?;
        if total == 0 || self.bytes_done >= total {
            return Some(1.0);
        }
        Some(self.bytes_done as f64 / total as f64)
    }

    /// The part done in percent, from 0.0 to 100.0, when the total is known.
    pub fn percent(&self) -> Option<f64> {
        self.fraction().map(|f| f * 100.0)
    }

    /// Whether this is the last event of its series: the phase is
    /// [`Phase::Done`] or all the known total is done.
    pub fn is_final(&self) -> bool {
        self.phase == Phase::Done || self.bytes_total.is_some_and(|t| self.bytes_done >= t)
    }

    /// Whether `other` reports on the same thing (phase, item and index), so
    /// that the later of the two supersedes the earlier.
    fn same_series(&self, other: &ProgressEvent) -> bool {
        self.phase == other.phase && self.item == other.item && self.item_index == other.item_index
    }
}

/// How an operation ended, as told to [`ProgressSink::on_finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It succeeded.
    Succeeded,
    /// It failed.
    Failed {
        /// The error, as text.
        message: String,
    },
    /// The caller cancelled it.
    Cancelled,
}

impl Outcome {
    /// A failure described by `message`.
    pub fn failed(message: impl Into<String>) -> Self {
        Outcome::Failed {
            message: message.into(),
        }
    }

    /// The outcome of `result`: [`Outcome::Cancelled`] for an error of kind
    /// [`ErrorKind::Cancelled`], [`Outcome::Failed`] with the error's message
    /// for any other error.
    pub fn from_result<T>(result: &Result<T>) -> Self {
        match result {
            Ok(_) => Outcome::Succeeded,
            Err(e) => Outcome::from(e),
        }
    }

    /// Whether the operation succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }
}

impl From<&Error> for Outcome {
    fn from(e: &Error) -> Self {
        if e.kind() == ErrorKind::Cancelled {
            Outcome::Cancelled
        } else {
            Outcome::failed(e.to_string())
        }
    }
}

/// Where progress events go.
///
/// Sinks are called synchronously, on the task or thread that reports
/// progress, sometimes while that reporter holds a lock (an
/// [`ItemProgress`] keeps its events in order that way). So a sink must be
/// cheap and must not block for long: hand the event over (a channel, a
/// mutex-protected value) rather than doing network I/O in place, and never
/// call back into the [`Progress`] or [`ItemProgress`] that called it. A sink
/// must not panic.
///
/// Any `Arc<S>` of a sink is a sink too, so a caller can keep a handle on a
/// sink it also gave to a [`Progress`].
pub trait ProgressSink: Send + Sync + 'static {
    /// Receives one event.
    fn on_event(&self, event: &ProgressEvent);

    /// Receives the outcome of the whole operation, once, after its last
    /// event. The default does nothing.
    fn on_finish(&self, outcome: &Outcome) {
        let _ = outcome;
    }
}

impl<S: ProgressSink + ?Sized> ProgressSink for Arc<S> {
    fn on_event(&self, event: &ProgressEvent) {
        (**self).on_event(event);
    }

    fn on_finish(&self, outcome: &Outcome) {
        (**self).on_finish(outcome);
    }
}

/// A cheap, cloneable handle that sends events to zero or more sinks.
///
/// [`Progress::none`] (also the [`Default`]) discards everything at no cost.
/// Clones share the same sinks.
#[derive(Clone, Default)]
pub struct Progress {
    sinks: Option<Arc<[Arc<dyn ProgressSink>]>>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("sinks", &self.sinks.as_ref().map_or(0, |s| s.len()))
            .finish()
    }
}

impl Progress {
    /// A handle that discards every event.
    pub fn none() -> Self {
        Progress { sinks: None }
    }

    /// A handle sending events to `sink`.
    pub fn new(sink: impl ProgressSink) -> Self {
        Progress::none().with_sink(sink)
    }

    /// This handle's sinks plus `sink`.
    ///
    /// Other clones of `self` keep their sinks; only the returned handle
    /// sends to `sink`.
    #[must_use]
    pub fn with_sink(self, sink: impl ProgressSink) -> Self {
        let mut sinks: Vec<Arc<dyn ProgressSink>> =
            self.sinks.as_deref().map(<[_]>::to_vec).unwrap_or_default();
        sinks.push(Arc::new(sink));
        Progress {
            sinks: Some(sinks.into()),
        }
    }

    /// Whether any sink listens; reporters may skip building costly events
    /// when none does.
    pub fn is_enabled(&self) -> bool {
        self.sinks.is_some()
    }

    /// Sends `event` to every sink, in the order they were added.
    pub fn emit(&self, event: ProgressEvent) {
        self.dispatch(&event);
    }

    fn dispatch(&self, event: &ProgressEvent) {
        for sink in self.sinks.iter().flat_map(|s| s.iter()) {
            sink.on_event(event);
        }
    }

    /// Tells every sink how the operation ended. Call it once, after the
    /// last event.
    pub fn finish(&self, outcome: Outcome) {
        for sink in self.sinks.iter().flat_map(|s| s.iter()) {
            sink.on_finish(&outcome);
        }
    }

    /// Starts tracking one item of `phase`: a tracker that emits throttled
    /// events with `bytes_done` out of `bytes_total`. The first event (0
    /// bytes) is emitted at once.
    pub fn item(
        &self,
        phase: Phase,
        item: impl Into<String>,
        bytes_total: Option<u64>,
    ) -> ItemProgress {
        self.track(ProgressEvent::new(phase, 0, bytes_total).with_item(item))
    }

    /// Starts tracking the series of `first`, which is emitted at once: the
    /// tracker's events are copies of it with updated bytes, rate and ETA.
    /// Use this to set an index or a message on every event of the series.
    pub fn track(&self, first: ProgressEvent) -> ItemProgress {
        let tracker = ItemProgress {
            progress: self.clone(),
            min_interval: ItemProgress::DEFAULT_MIN_INTERVAL,
            state: Mutex::new(TrackState {
                event: first,
                last_emit: None,
                last_emitted_done: None,
                final_emitted: false,
                meter: Meter::default(),
            }),
        };
        tracker.update(|d| d, true);
        tracker
    }
}

/// Reports the bytes done on one item, throttled.
///
/// Made by [`Progress::item`] or [`Progress::track`]. Each [`add`](Self::add)
/// or [`set`](Self::set) updates the count; an event goes out only when at
/// least the minimum interval (100 ms by default) passed since the previous
/// one, except that the first event and the final one (all of the known
/// total done) always go out, so a copy of 1 MiB chunks at 2 GB/s does not
/// send 2000 events a second. [`finish`](Self::finish) sends the current
/// count when it was not sent yet, for items of unknown size.
///
/// Events carry the rate and ETA measured by a [`Meter`] over the last
/// 10 seconds. Methods take `&self`, so parallel copy tasks can share one
/// tracker through an `Arc`; events of one tracker go out in order.
pub struct ItemProgress {
    progress: Progress,
    min_interval: Duration,
    state: Mutex<TrackState>,
}

struct TrackState {
    event: ProgressEvent,
    last_emit: Option<Instant>,
    last_emitted_done: Option<u64>,
    final_emitted: bool,
    meter: Meter,
}

impl fmt::Debug for ItemProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.state);
        f.debug_struct("ItemProgress")
            .field("event", &st.event)
            .field("min_interval", &self.min_interval)
            .finish()
    }
}

impl ItemProgress {
    /// The default minimum time between two events of one tracker.
    pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(100);

    /// Sets the minimum time between two events (the first and the final
    /// event go out regardless).
    #[must_use]
    pub fn with_min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// Counts `bytes` more done.
    pub fn add(&self, bytes: u64) {
        self.update(|d| d.saturating_add(bytes), false);
    }

    /// Sets the bytes done to `done`. Going backwards (a retried item)
    /// restarts the rate measurement.
    pub fn set(&self, done: u64) {
        self.update(|_| done, false);
    }

    /// The bytes done so far.
    pub fn bytes_done(&self) -> u64 {
        lock(&self.state).event.bytes_done
    }

    /// Sends the current count unless it was sent already: the final event
    /// of an item whose size was not known.
    pub fn finish(&self) {
        self.update(|d| d, true);
    }

    fn update(&self, f: impl FnOnce(u64) -> u64, force: bool) {
        let now = now();
        let mut st = lock(&self.state);
        let done = f(st.event.bytes_done);
        st.event.bytes_done = done;
        st.meter.record(now, done);
        if !self.progress.is_enabled() {
            return;
        }
        let is_final = st.event.bytes_total.is_some_and(|t| done >= t);
        if !is_final {
            st.final_emitted = false;
        }
        let changed = st.last_emitted_done != Some(done);
        let due = st
            .last_emit
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_interval);
        let first_final = is_final && !st.final_emitted;
        if !(changed && (force || due || first_final)) {
            return;
        }
        st.last_emit = Some(now);
        st.last_emitted_done = Some(done);
        st.final_emitted |= is_final;
        let mut event = st.event.clone();
        event.bytes_per_sec = st.meter.rate();
        event.eta_secs = event
            .bytes_total
            .and_then(|t| st.meter.eta(t))
            .map(|d| d.as_secs_f64());
        // Emitted under the lock so one tracker's events stay in order.
        self.progress.dispatch(&event);
    }
}

/// Measures a transfer rate over a moving window and estimates the time
/// left.
///
/// Feed it `(instant, bytes done so far)` samples with
/// [`record`](Self::record). The rate is the bytes between the newest sample
/// and the newest sample at or before the start of the window (the window
/// ends at the newest sample), divided by the time between them; so after a
/// stall the rate shows the slow average, not nothing. Samples closer
/// together than 1/64 of the window are merged, which bounds the memory.
///
/// ```
/// use std::time::{Duration, Instant};
/// use hypersdk_core::progress::Meter;
///
/// let t0 = Instant::now();
/// let mut m = Meter::new(Duration::from_secs(10));
/// assert_eq!(m.rate(), None);
/// m.record(t0, 0);
/// m.record(t0 + Duration::from_secs(2), 200);
/// assert_eq!(m.rate(), Some(100.0));
/// assert_eq!(m.eta(1200), Some(Duration::from_secs(10)));
/// assert_eq!(m.eta(100), Some(Duration::ZERO));
/// ```
#[derive(Debug, Clone)]
pub struct Meter {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl Default for Meter {
    /// A meter over a 10 s window.
    fn default() -> Self {
        Meter::new(Meter::DEFAULT_WINDOW)
    }
}

impl Meter {
    /// The default window.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

    /// Samples closer together than `window / MERGE_DIVISOR` are merged.
    const MERGE_DIVISOR: u32 = 64;

    /// A meter measuring the rate over `window` (at least 1 ms).
    pub fn new(window: Duration) -> Self {
        Meter {
            window: window.max(Duration::from_millis(1)),
            samples: VecDeque::new(),
        }
    }

    /// The window the rate is measured over.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Records that `bytes_done` bytes were done at `now`.
    ///
    /// A sample with fewer bytes than the previous one, or an earlier
    /// instant, starts the measurement afresh (the item was restarted).
    pub fn record(&mut self, now: Instant, bytes_done: u64) {
        if let Some(&(t, b)) = self.samples.back()
            && (bytes_done < b || now < t)
        {
            self.samples.clear();
        }
        let merge_gap = self.window / Self::MERGE_DIVISOR;
        let n = self.samples.len();
        if n >= 2 && now.saturating_duration_since(self.samples[n - 2].0) < merge_gap {
            // Keep the older of the two as the anchor, move the newest.
            self.samples[n - 1] = (now, bytes_done);
        } else {
            self.samples.push_back((now, bytes_done));
        }
        // Keep one sample at or before the window's start as the anchor.
        if let Some(start) = now.checked_sub(self.window) {
            while self.samples.len() > 2 && self.samples[1].0 <= start {
                self.samples.pop_front();
            }
        }
    }

    /// Forgets all samples.
    pub fn reset(&mut self) {
        self.samples.clear();
    }

    /// The bytes done of the newest sample.
    pub fn bytes_done(&self) -> Option<u64> {
        self.samples.back().map(|&(_, b)| b)
    }

    /// The rate in bytes per second; `None` with fewer than two samples or
    /// no time between them.
    pub fn rate(&self) -> Option<f64> {
        let &(t0, b0) = self.samples.front()?;
        let &(t1, b1) = self.samples.back()?;
        let secs = t1.saturating_duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        Some(b1.saturating_sub(b0) as f64 / secs)
    }

    /// The estimated time until `total` bytes are done: zero when they are
    /// already, `None` without a measured rate or with a rate of zero.
    pub fn eta(&self, total: u64) -> Option<Duration> {
        let done = self.bytes_done()?;
        if done >= total {
            return Some(Duration::ZERO);
        }
        let rate = self.rate()?;
        if rate <= 0.0 {
            return None;
        }
        Duration::try_from_secs_f64((total - done) as f64 / rate).ok()
    }
}

/// A sink that calls a closure for each event (and optionally another one
/// for the outcome).
///
/// The closures run on the reporting task; see [`ProgressSink`] for what
/// they may do.
pub struct CallbackSink {
    on_event: EventFn,
    on_finish: Option<FinishFn>,
}

type EventFn = Box<dyn Fn(&ProgressEvent) + Send + Sync>;
type FinishFn = Box<dyn Fn(&Outcome) + Send + Sync>;

impl fmt::Debug for CallbackSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackSink")
            .field("on_finish", &self.on_finish.is_some())
            .finish_non_exhaustive()
    }
}

impl CallbackSink {
    /// A sink calling `f` for each event.
    pub fn new(f: impl Fn(&ProgressEvent) + Send + Sync + 'static) -> Self {
        CallbackSink {
            on_event: Box::new(f),
            on_finish: None,
        }
    }

    /// Also calls `f` with the outcome.
    #[must_use]
    pub fn with_finish(mut self, f: impl Fn(&Outcome) + Send + Sync + 'static) -> Self {
        self.on_finish = Some(Box::new(f));
        self
    }
}

impl ProgressSink for CallbackSink {
    fn on_event(&self, event: &ProgressEvent) {
        (self.on_event)(event);
    }

    fn on_finish(&self, outcome: &Outcome) {
        if let Some(f) = &self.on_finish {
            f(outcome);
        }
    }
}

/// A sink feeding a [`ProgressStream`].
///
/// The queue between them is bounded and never blocks the reporter. When
/// it is full (the consumer is slower than the reporters), an intermediate
/// event makes room: a new event replaces the newest queued one of the same
/// series (same phase, item and index; the later count supersedes the
/// earlier), otherwise the oldest queued event that is not final is dropped.
/// Final events ([`ProgressEvent::is_final`]) are never dropped, so a
/// consumer always sees each item complete. [`ProgressStream::dropped`]
/// counts what was dropped.
///
/// The stream ends after [`Progress::finish`] (its outcome is then in
/// [`ProgressStream::outcome`]) or when every [`Progress`] holding the sink
/// is gone, once the queued events are read. Events after the finish are
/// ignored, as are all events once the stream is dropped.
///
/// ```
/// use futures::StreamExt;
/// use hypersdk_core::progress::{ChannelSink, Outcome, Phase, Progress, ProgressEvent};
///
/// let (sink, mut stream) = ChannelSink::new(64);
/// let progress = Progress::new(sink);
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// rt.block_on(async move {
///     tokio::spawn(async move {
///         progress.emit(ProgressEvent::new(Phase::Connecting, 0, None));
///         progress.finish(Outcome::Succeeded);
///     });
///     let ev = stream.next().await.unwrap();
///     assert_eq!(ev.phase, Phase::Connecting);
///     assert!(stream.next().await.is_none());
///     assert_eq!(stream.outcome(), Some(Outcome::Succeeded));
/// });
/// ```
#[derive(Debug)]
pub struct ChannelSink {
    shared: Arc<Mutex<ChannelState>>,
}

#[derive(Debug)]
struct ChannelState {
    queue: VecDeque<ProgressEvent>,
    capacity: usize,
    waker: Option<Waker>,
    outcome: Option<Outcome>,
    /// No more events will come: finished, or the sink was dropped.
    closed: bool,
    receiver_gone: bool,
    dropped: u64,
}

impl ChannelState {
    fn push(&mut self, event: ProgressEvent) {
        if self.queue.len() >= self.capacity {
            if let Some(last) = self.queue.back_mut()
                && !last.is_final()
                && last.same_series(&event)
            {
                *last = event;
                self.dropped += 1;
                return;
            }
            if let Some(i) = self.queue.iter().position(|e| !e.is_final()) {
                self.queue.remove(i);
                self.dropped += 1;
            }
        }
        // Beyond capacity only when every queued event is final.
        self.queue.push_back(event);
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl ChannelSink {
    /// A sink and the stream it feeds, queueing up to `capacity` events
    /// (at least 1).
    pub fn new(capacity: usize) -> (ChannelSink, ProgressStream) {
        let shared = Arc::new(Mutex::new(ChannelState {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            waker: None,
            outcome: None,
            closed: false,
            receiver_gone: false,
            dropped: 0,
        }));
        (
            ChannelSink {
                shared: Arc::clone(&shared),
            },
            ProgressStream { shared },
        )
    }
}

impl ProgressSink for ChannelSink {
    fn on_event(&self, event: &ProgressEvent) {
        let mut st = lock(&self.shared);
        if st.closed || st.receiver_gone {
            return;
        }
        st.push(event.clone());
        st.wake();
    }

    fn on_finish(&self, outcome: &Outcome) {
        let mut st = lock(&self.shared);
        if st.closed {
            return;
        }
        st.outcome = Some(outcome.clone());
        st.closed = true;
        st.wake();
    }
}

impl Drop for ChannelSink {
    fn drop(&mut self) {
        let mut st = lock(&self.shared);
        st.closed = true;
        st.wake();
    }
}

/// The events of a [`ChannelSink`], as a [`futures::Stream`].
///
/// Ends after the operation finished or when its [`Progress`] handles are
/// all gone; see [`ChannelSink`] for the queueing rules.
#[derive(Debug)]
pub struct ProgressStream {
    shared: Arc<Mutex<ChannelState>>,
}

impl ProgressStream {
    /// How the operation ended, once [`Progress::finish`] was called.
    pub fn outcome(&self) -> Option<Outcome> {
        lock(&self.shared).outcome.clone()
    }

    /// How many intermediate events were dropped or replaced because the
    /// queue was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.shared).dropped
    }
}

impl Stream for ProgressStream {
    type Item = ProgressEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ProgressEvent>> {
        let mut st = lock(&self.shared);
        if let Some(ev) = st.queue.pop_front() {
            return Poll::Ready(Some(ev));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for ProgressStream {
    fn drop(&mut self) {
        let mut st = lock(&self.shared);
        st.receiver_gone = true;
        st.queue.clear();
    }
}

/// The content of a virt-v2v wrapper state file.
///
/// The format: `started` is `true` once the work started, with `pid` (the
/// process doing it), `disks` (each disk's `path` and copy `progress` in
/// percent, 0 to 100) and `disk_count` (the number of disks to copy). When
/// the work ends, `return_code` (0 for success) appears, together with
/// `finished: true`, and `failed: true` only when it failed: on success
/// `failed` is absent, not `false`.
///
/// ```
/// use hypersdk_core::progress::StateFile;
///
/// let s: StateFile = serde_json::from_str(
///     r#"{"started": true, "pid": 42, "disks": [{"path": "/a", "progress": 12.5}], "disk_count": 1}"#,
/// ).unwrap();
/// assert!(s.started && !s.finished && !s.failed);
/// assert_eq!(s.disks[0].progress, 12.5);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StateFile {
    /// Whether the work started.
    #[serde(default)]
    pub started: bool,
    /// The id of the process doing the work.
    #[serde(default)]
    pub pid: u32,
    /// The disks and their copy progress.
    #[serde(default)]
    pub disks: Vec<StateFileDisk>,
    /// The number of disks to copy.
    #[serde(default)]
    pub disk_count: usize,
    /// The exit status once the work ended: 0 on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_code: Option<i32>,
    /// Whether the work ended; written as `true` or not at all.
    #[serde(default, skip_serializing_if = "is_false")]
    pub finished: bool,
    /// Whether the work failed; written as `true` or not at all.
    #[serde(default, skip_serializing_if = "is_false")]
    pub failed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One disk of a [`StateFile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StateFileDisk {
    /// The disk's path (or another name the consumer knows it by).
    pub path: String,
    /// The copy progress in percent, from 0 to 100.
    pub progress: f64,
}

impl StateFileDisk {
    /// A disk at `path` with `progress` percent done.
    pub fn new(path: impl Into<String>, progress: f64) -> Self {
        StateFileDisk {
            path: path.into(),
            progress,
        }
    }
}

/// A sink keeping a virt-v2v wrapper state file ([`StateFile`]) up to date.
///
/// Each disk's `progress` follows the events of the copy phases
/// ([`Phase::moves_bytes`]) whose `item` is the disk's path; the latest
/// event wins. A sink made with no disks learns them from those events, in
/// order of appearance, and takes `disk_count` from their `item_count` when
/// it is larger than the disks seen so far; a sink made with a list of disks
/// ignores other items.
///
/// The file is always replaced atomically (a temporary file renamed over
/// it), so a polling reader never sees a torn file; it is created with mode
/// `0o600` unless [`with_mode`](Self::with_mode) says otherwise. Writes
/// happen in [`on_event`](ProgressSink::on_event) itself, as blocking I/O
/// with an fsync, so they are throttled: a changed state is written when a
/// disk's whole percentage changed, a disk was added, or
/// [`with_min_interval`](Self::with_min_interval) (1 s by default) passed
/// since the last write, and always on finish. A failed write is logged
/// with `tracing::warn!` and never stops the operation.
///
/// [`Progress::finish`] writes `return_code` 0 on success and 1 otherwise,
/// `finished: true`, and `failed: true` on failure; to choose the return
/// code, keep an `Arc` of the sink and call [`finish`](Self::finish).
#[derive(Debug)]
pub struct StateFileSink {
    path: PathBuf,
    mode: u32,
    min_interval: Duration,
    inner: Mutex<StateInner>,
}

#[derive(Debug)]
struct StateInner {
    state: StateFile,
    learn: bool,
    last_written: Option<StateFile>,
    last_attempt: Option<Instant>,
    /// The last write failed.
    failing: bool,
}

impl StateFileSink {
    /// The default minimum time between two writes of a state whose whole
    /// percentages did not change.
    pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

    /// A sink for the state file at `path` tracking `disks` (their paths, in
    /// order), or learning them from events when `disks` is empty. The pid
    /// is this process's. Nothing is written until [`start`](Self::start),
    /// the first event or the finish.
    pub fn new<D: Into<String>>(
        path: impl Into<PathBuf>,
        disks: impl IntoIterator<Item = D>,
    ) -> Self {
        let disks: Vec<StateFileDisk> = disks
            .into_iter()
            .map(|p| StateFileDisk::new(p, 0.0))
            .collect();
        let learn = disks.is_empty();
        let state = StateFile {
            started: true,
            pid: std::process::id(),
            disk_count: disks.len(),
            disks,
            return_code: None,
            finished: false,
            failed: false,
        };
        StateFileSink {
            path: path.into(),
            mode: 0o600,
            min_interval: Self::DEFAULT_MIN_INTERVAL,
            inner: Mutex::new(StateInner {
                state,
                learn,
                last_written: None,
                last_attempt: None,
                failing: false,
            }),
        }
    }

    fn inner_mut(&mut self) -> &mut StateInner {
        self.inner.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `pid` instead of this process's id.
    #[must_use]
    pub fn with_pid(mut self, pid: u32) -> Self {
        self.inner_mut().state.pid = pid;
        self
    }

    /// Creates the file with permissions `mode` (unix) instead of `0o600`.
    #[must_use]
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the minimum time between two writes of a state whose whole
    /// percentages did not change ([`Duration::ZERO`] writes every change).
    #[must_use]
    pub fn with_min_interval(mut self, interval: Duration) -> Self {
        self.min_interval = interval;
        self
    }

    /// Writes the initial state (`started`, `pid`, `disks`, `disk_count`)
    /// now, so that a bad path shows up as an error before the work starts.
    pub fn start(self) -> Result<Self> {
        {
            let mut inner = lock(&self.inner);
            self.write(&mut inner, now())?;
        }
        Ok(self)
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current state (possibly newer than the file, which is
    /// throttled).
    pub fn state(&self) -> StateFile {
        lock(&self.inner).state.clone()
    }

    /// Ends the state: writes `return_code`, `finished: true`, and
    /// `failed: true` when `return_code` is not 0. Later events are ignored.
    ///
    /// Unlike the sink methods, this returns the write error.
    pub fn finish(&self, return_code: i32) -> Result<()> {
        let mut inner = lock(&self.inner);
        inner.state.return_code = Some(return_code);
        inner.state.finished = true;
        inner.state.failed = return_code != 0;
        self.write(&mut inner, now())
    }

    fn write(&self, inner: &mut StateInner, now: Instant) -> Result<()> {
        inner.last_attempt = Some(now);
        let result = serde_json::to_vec(&inner.state)
            .map_err(|e| Error::Other {
                message: format!("cannot serialize state file '{}'", self.path.display()),
                source: Some(Box::new(e)),
            })
            .and_then(|bytes| crate::fsutil::write_atomic(&self.path, &bytes, Some(self.mode)));
        inner.failing = result.is_err();
        if result.is_ok() {
            inner.last_written = Some(inner.state.clone());
        }
        result
    }

    fn should_write(&self, inner: &StateInner, now: Instant) -> bool {
        if inner.last_written.as_ref() == Some(&inner.state) {
            return false;
        }
        let due = inner
            .last_attempt
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_interval);
        let Some(last) = inner.last_written.as_ref().filter(|_| !inner.failing) else {
            // Never written yet, or the last write failed: retry once per
            // interval at most, so a bad path does not flood the log.
            return due;
        };
        let significant = last.disk_count != inner.state.disk_count
            || last.disks.len() != inner.state.disks.len()
            || last
                .disks
                .iter()
                .zip(&inner.state.disks)
                .any(|(a, b)| a.path != b.path || a.progress.floor() != b.progress.floor());
        significant || due
    }
}

impl StateInner {
    /// Folds `event` into the state.
    fn apply(&mut self, event: &ProgressEvent) {
        if !event.phase.moves_bytes() {
            return;
        }
        let (Some(item), Some(percent)) = (event.item.as_deref(), event.percent()) else {
            return;
        };
        let index = match self.state.disks.iter().position(|d| d.path == item) {
            Some(i) => i,
            None if self.learn => {
                self.state.disks.push(StateFileDisk::new(item, 0.0));
                self.state.disks.len() - 1
            }
            None => return,
        };
        if self.learn {
            self.state.disk_count = self
                .state
                .disk_count
                .max(self.state.disks.len())
                .max(event.item_count.unwrap_or(0));
        }
        if let Some(disk) = self.state.disks.get_mut(index) {
            // Two decimals are plenty for a progress bar and keep the file
            // stable between whole-percent writes.
            disk.progress = (percent * 100.0).round() / 100.0;
        }
    }
}

impl ProgressSink for StateFileSink {
    fn on_event(&self, event: &ProgressEvent) {
        let mut inner = lock(&self.inner);
        if inner.state.finished {
            return;
        }
        inner.apply(event);
        let now = now();
        if self.should_write(&inner, now)
            && let Err(e) = self.write(&mut inner, now)
        {
            tracing::warn!(error = %e, "cannot update the progress state file");
        }
    }

    fn on_finish(&self, outcome: &Outcome) {
        let code = if outcome.is_success() { 0 } else { 1 };
        if let Err(e) = self.finish(code) {
            tracing::warn!(error = %e, "cannot write the final progress state file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use serde_json::json;

    /// A sink recording everything it receives.
    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<ProgressEvent>>,
        outcomes: Mutex<Vec<Outcome>>,
    }

    impl Recorder {
        fn events(&self) -> Vec<ProgressEvent> {
            self.events.lock().unwrap().clone()
        }
        fn done(&self) -> Vec<u64> {
            self.events().iter().map(|e| e.bytes_done).collect()
        }
    }

    impl ProgressSink for Recorder {
        fn on_event(&self, event: &ProgressEvent) {
            self.events.lock().unwrap().push(event.clone());
        }
        fn on_finish(&self, outcome: &Outcome) {
            self.outcomes.lock().unwrap().push(outcome.clone());
        }
    }

    fn recorded() -> (Arc<Recorder>, Progress) {
        let rec = Arc::new(Recorder::default());
        (Arc::clone(&rec), Progress::new(Arc::clone(&rec)))
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn phase_names() {
        assert_eq!(Phase::Transferring.to_string(), "transferring");
        assert_eq!(
            serde_json::to_value(Phase::Snapshotting).unwrap(),
            json!("snapshotting")
        );
        let p: Phase = serde_json::from_value(json!("done")).unwrap();
        assert_eq!(p, Phase::Done);
        assert!(Phase::Exporting.moves_bytes() && Phase::Importing.moves_bytes());
        assert!(!Phase::Verifying.moves_bytes());
    }

    #[test]
    fn event_math_and_serde() {
        let ev = ProgressEvent::new(Phase::Transferring, 250, Some(1000));
        assert_eq!(ev.fraction(), Some(0.25));
        assert_eq!(ev.percent(), Some(25.0));
        assert!(!ev.is_final());
        assert_eq!(
            ProgressEvent::new(Phase::Transferring, 5, None).percent(),
            None
        );
        assert_eq!(
            ProgressEvent::new(Phase::Transferring, 0, Some(0)).fraction(),
            Some(1.0)
        );
        let over = ProgressEvent::new(Phase::Transferring, 2000, Some(1000));
        assert_eq!(over.percent(), Some(100.0));
        assert!(over.is_final());
        assert!(ProgressEvent::new(Phase::Done, 0, None).is_final());

        let ev = ProgressEvent::new(Phase::Importing, 1, Some(2))
            .with_item("disk-0")
            .with_index(0, 3)
            .with_message("hi")
            .with_rate(10.0)
            .with_eta(Duration::from_millis(1500));
        assert_eq!(ev.eta(), Some(Duration::from_millis(1500)));
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            json!({"phase": "importing", "item": "disk-0", "item_index": 0, "item_count": 3,
                   "bytes_done": 1, "bytes_total": 2, "bytes_per_sec": 10.0, "eta_secs": 1.5,
                   "message": "hi"})
        );
        let back: ProgressEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
        let bare = serde_json::to_value(ProgressEvent::new(Phase::Connecting, 0, None)).unwrap();
        assert_eq!(bare, json!({"phase": "connecting", "bytes_done": 0}));
        assert_eq!(
            ProgressEvent::new(Phase::Done, 0, None)
                .with_rate(f64::NAN)
                .bytes_per_sec,
            None
        );
    }

    #[test]
    fn outcome_from_result() {
        assert!(Outcome::from_result(&Ok::<_, Error>(())).is_success());
        let e: Result<()> = Err(Error::cancelled("copy"));
        assert_eq!(Outcome::from_result(&e), Outcome::Cancelled);
        let e: Result<()> = Err(Error::other("boom"));
        assert_eq!(Outcome::from_result(&e), Outcome::failed("boom"));
    }

    #[test]
    fn fan_out_in_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (Arc::clone(&order), Arc::clone(&order));
        let finished = Arc::new(Mutex::new(None));
        let f = Arc::clone(&finished);
        let base = Progress::new(CallbackSink::new(move |_| a.lock().unwrap().push("a")));
        let progress = base.clone().with_sink(
            CallbackSink::new(move |_| b.lock().unwrap().push("b"))
                .with_finish(move |o| *f.lock().unwrap() = Some(o.clone())),
        );
        assert_eq!(format!("{progress:?}"), "Progress { sinks: 2 }");
        progress.emit(ProgressEvent::new(Phase::Connecting, 0, None));
        base.emit(ProgressEvent::new(Phase::Connecting, 0, None));
        assert_eq!(*order.lock().unwrap(), ["a", "b", "a"]);
        progress.finish(Outcome::failed("x"));
        assert_eq!(*finished.lock().unwrap(), Some(Outcome::failed("x")));

        let none = Progress::default();
        assert!(!none.is_enabled());
        none.emit(ProgressEvent::new(Phase::Done, 0, None));
        none.finish(Outcome::Succeeded);
        let item = none.item(Phase::Transferring, "d", Some(10));
        item.add(4);
        assert_eq!(item.bytes_done(), 4);
    }

    #[test]
    fn meter_edge_cases() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        assert_eq!(m.window(), SECOND * 10);
        assert_eq!(m.rate(), None);
        assert_eq!(m.eta(100), None);
        m.record(t0, 0);
        assert_eq!(m.rate(), None, "one sample");
        assert_eq!(m.eta(0), Some(Duration::ZERO), "nothing to do");
        m.record(t0, 50);
        assert_eq!(m.rate(), None, "zero elapsed");
        assert_eq!(m.eta(100), None);
        m.record(t0 + SECOND, 50);
        assert_eq!(
            m.rate(),
            Some(50.0),
            "the burst at t0 counts from its start"
        );
        m.record(t0 + SECOND * 2, 150);
        assert_eq!(m.rate(), Some(75.0));
        assert_eq!(m.eta(300), Some(Duration::from_secs(2)));
        assert_eq!(m.eta(150), Some(Duration::ZERO));
        assert_eq!(m.eta(10), Some(Duration::ZERO), "done beyond total");

        let mut stalled = Meter::default();
        stalled.record(t0, 50);
        stalled.record(t0 + SECOND, 50);
        assert_eq!(stalled.rate(), Some(0.0));
        assert_eq!(stalled.eta(100), None, "zero rate");

        // Bytes going backwards restart the measurement.
        m.record(t0 + SECOND * 3, 10);
        assert_eq!(m.rate(), None);
        assert_eq!(m.bytes_done(), Some(10));
        m.record(t0 + SECOND * 4, 110);
        assert_eq!(m.rate(), Some(100.0));
        // So does time going backwards.
        m.record(t0, 200);
        assert_eq!(m.rate(), None);
        m.reset();
        assert_eq!(m.bytes_done(), None);
    }

    #[test]
    fn meter_window_slides() {
        let t0 = Instant::now();
        let mut m = Meter::new(SECOND * 10);
        // 100 B/s for 20 s, then 1000 B/s for 10 s.
        let mut bytes = 0;
        for s in 0..=20u64 {
            bytes = s * 100;
            m.record(t0 + SECOND * s as u32, bytes);
        }
        assert_eq!(m.rate(), Some(100.0));
        for s in 21..=30u64 {
            bytes += 1000;
            m.record(t0 + SECOND * s as u32, bytes);
        }
        assert_eq!(m.rate(), Some(1000.0), "only the last 10 s count");

        // A stall longer than the window: the rate is the slow average over
        // it, anchored at the last sample before the window.
        m.record(t0 + SECOND * 50, bytes + 2000);
        assert_eq!(m.rate(), Some(100.0));
    }

    #[test]
    fn meter_memory_is_bounded() {
        let t0 = Instant::now();
        let mut m = Meter::new(SECOND * 10);
        for i in 0..100_000u64 {
            m.record(t0 + Duration::from_micros(i * 500), i * 1024);
        }
        assert!(
            m.samples.len() <= Meter::MERGE_DIVISOR as usize + 3,
            "{}",
            m.samples.len()
        );
        let rate = m.rate().unwrap();
        let expected = 1024.0 / 0.0005;
        assert!((rate - expected).abs() / expected < 1e-9, "{rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn tracker_throttles_by_time() {
        let (rec, progress) = recorded();
        let total = 1000 * 1024;
        let item = progress.item(Phase::Transferring, "disk-0", Some(total));
        assert_eq!(rec.done(), [0], "the first event goes out at once");
        // A burst without time passing: nothing until the final event.
        for _ in 0..999 {
            item.add(1024);
        }
        assert_eq!(rec.done(), [0]);
        item.add(1024);
        assert_eq!(rec.done(), [0, total], "the final event always goes out");
        item.add(0);
        item.finish();
        assert_eq!(rec.events().len(), 2, "nothing new to say");

        // Time passing: one event per 100 ms at most.
        let (rec, progress) = recorded();
        let item = progress.item(Phase::Transferring, "disk-1", Some(40 * 1000));
        for _ in 0..40 {
            tokio::time::advance(ms(25)).await;
            item.add(1000);
        }
        let done = rec.done();
        let expected: Vec<u64> = (0..=10).map(|k| k * 4000).collect();
        assert_eq!(done, expected);
        let last = rec.events().pop().unwrap();
        assert!(last.is_final());
        assert_eq!(last.item.as_deref(), Some("disk-1"));
        let rate = last.bytes_per_sec.unwrap();
        assert!((rate - 40_000.0).abs() < 1e-6, "{rate}");
        assert_eq!(last.eta_secs, Some(0.0));
        let mid = &rec.events()[5];
        assert!((mid.eta_secs.unwrap() - 0.5).abs() < 1e-9, "{mid:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn tracker_unknown_total_and_restart() {
        let (rec, progress) = recorded();
        let item = progress
            .track(
                ProgressEvent::new(Phase::Exporting, 0, None)
                    .with_item("a.vmdk")
                    .with_index(1, 2),
            )
            .with_min_interval(SECOND);
        item.add(10);
        item.add(10);
        assert_eq!(rec.done(), [0]);
        item.finish();
        assert_eq!(rec.done(), [0, 20], "finish sends the last count");
        item.finish();
        assert_eq!(rec.done(), [0, 20]);
        assert!(
            rec.events()
                .iter()
                .all(|e| e.item_index == Some(1) && e.item_count == Some(2))
        );

        let (rec, progress) = recorded();
        let item = progress
            .item(Phase::Transferring, "b", Some(100))
            .with_min_interval(Duration::ZERO);
        item.set(100);
        item.set(0); // retried from scratch
        item.set(100);
        assert_eq!(rec.done(), [0, 100, 0, 100]);
        assert_eq!(rec.events().iter().filter(|e| e.is_final()).count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn tracker_shared_between_tasks() {
        let (rec, progress) = recorded();
        let item = Arc::new(progress.item(Phase::Transferring, "d", Some(64 * 100)));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let item = Arc::clone(&item);
            tasks.push(tokio::spawn(async move {
                for _ in 0..16 {
                    item.add(100);
                    tokio::time::sleep(ms(10)).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let done = rec.done();
        assert_eq!(done.last(), Some(&6400));
        assert!(done.windows(2).all(|w| w[0] < w[1]), "in order: {done:?}");
    }

    #[tokio::test]
    async fn stream_receives_events_and_outcome() {
        let (sink, mut stream) = ChannelSink::new(16);
        let progress = Progress::new(sink);
        let consumer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(ev) = stream.next().await {
                got.push(ev);
            }
            (got, stream.outcome(), stream.dropped())
        });
        tokio::task::yield_now().await;
        progress.emit(ProgressEvent::new(Phase::Connecting, 0, None));
        let item = progress.item(Phase::Transferring, "disk-0", Some(10));
        tokio::task::yield_now().await;
        item.add(10);
        progress.finish(Outcome::Succeeded);
        progress.emit(ProgressEvent::new(Phase::Done, 0, None)); // after finish: ignored
        let (got, outcome, dropped) = consumer.await.unwrap();
        let phases: Vec<Phase> = got.iter().map(|e| e.phase).collect();
        assert_eq!(
            phases,
            [Phase::Connecting, Phase::Transferring, Phase::Transferring]
        );
        assert!(got[2].is_final());
        assert_eq!(outcome, Some(Outcome::Succeeded));
        assert_eq!(dropped, 0);
    }

    #[tokio::test]
    async fn stream_ends_when_progress_is_dropped() {
        let (sink, mut stream) = ChannelSink::new(4);
        let progress = Progress::new(sink);
        let clone = progress.clone();
        progress.emit(ProgressEvent::new(Phase::Connecting, 0, None));
        drop(progress);
        assert_eq!(
            stream.next().await.map(|e| e.phase),
            Some(Phase::Connecting)
        );
        drop(clone);
        assert!(stream.next().await.is_none());
        assert_eq!(stream.outcome(), None);
    }

    #[tokio::test]
    async fn full_queue_drops_intermediate_events_never_final_ones() {
        let (sink, stream) = ChannelSink::new(4);
        let progress = Progress::new(sink);
        let ev = |item: &str, done| {
            ProgressEvent::new(Phase::Transferring, done, Some(100)).with_item(item)
        };
        for done in 0..=100 {
            progress.emit(ev("a", done));
        }
        // Replacing the newest event of the same series keeps the newest.
        {
            let st = lock(&stream.shared);
            let q: Vec<u64> = st.queue.iter().map(|e| e.bytes_done).collect();
            assert_eq!(q, [0, 1, 2, 100]);
        }
        // Several items, all with final events: finals survive even past
        // the capacity.
        for item in ["b", "c", "d", "e", "f"] {
            progress.emit(ev(item, 50));
            progress.emit(ev(item, 100));
        }
        progress.finish(Outcome::Succeeded);
        let got: Vec<ProgressEvent> = stream.collect().await;
        let finals: Vec<&str> = got
            .iter()
            .filter(|e| e.is_final())
            .map(|e| e.item.as_deref().unwrap())
            .collect();
        assert_eq!(finals, ["a", "b", "c", "d", "e", "f"]);
    }

    #[test]
    fn dropped_stream_stops_queueing() {
        let (sink, stream) = ChannelSink::new(2);
        let shared = Arc::clone(&stream.shared);
        drop(stream);
        let progress = Progress::new(sink);
        for i in 0..10 {
            progress.emit(ProgressEvent::new(Phase::Done, i, None));
        }
        assert!(lock(&shared).queue.is_empty());
    }

    fn read_state(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn state_file_stages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let sink = Arc::new(
            StateFileSink::new(&path, ["/data/sda.img", "/data/sdb.img"])
                .with_pid(4242)
                .start()
                .unwrap(),
        );
        let started = json!({
            "started": true, "pid": 4242, "disk_count": 2,
            "disks": [{"path": "/data/sda.img", "progress": 0.0},
                      {"path": "/data/sdb.img", "progress": 0.0}],
        });
        assert_eq!(read_state(&path), started);
        let raw = std::fs::read_to_string(&path).unwrap();
        assert!(
            !raw.contains("finished") && !raw.contains("failed") && !raw.contains("return_code")
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let progress = Progress::new(Arc::clone(&sink));
        let ev = |item: &str, done| {
            ProgressEvent::new(Phase::Transferring, done, Some(1000)).with_item(item)
        };
        // Not a copy phase, not a known disk, no total: no change.
        progress
            .emit(ProgressEvent::new(Phase::Verifying, 10, Some(1000)).with_item("/data/sda.img"));
        progress.emit(ev("/data/other.img", 500));
        progress.emit(ProgressEvent::new(Phase::Transferring, 5, None).with_item("/data/sda.img"));
        assert_eq!(read_state(&path), started);

        // A whole-percent change is written at once.
        progress.emit(ev("/data/sda.img", 255));
        assert_eq!(read_state(&path)["disks"][0]["progress"], json!(25.5));
        // A fractional change within the interval waits...
        progress.emit(ev("/data/sda.img", 257));
        assert_eq!(read_state(&path)["disks"][0]["progress"], json!(25.5));
        assert_eq!(sink.state().disks[0].progress, 25.7);
        // ...until the interval passed.
        tokio::time::advance(SECOND).await;
        progress.emit(ev("/data/sda.img", 258));
        assert_eq!(read_state(&path)["disks"][0]["progress"], json!(25.8));

        progress.emit(ev("/data/sda.img", 1000));
        progress.emit(ev("/data/sdb.img", 500));
        assert_eq!(
            read_state(&path),
            json!({
                "started": true, "pid": 4242, "disk_count": 2,
                "disks": [{"path": "/data/sda.img", "progress": 100.0},
                          {"path": "/data/sdb.img", "progress": 50.0}],
            })
        );

        progress.emit(ev("/data/sdb.img", 1000));
        progress.finish(Outcome::Succeeded);
        let done = json!({
            "started": true, "pid": 4242, "disk_count": 2,
            "disks": [{"path": "/data/sda.img", "progress": 100.0},
                      {"path": "/data/sdb.img", "progress": 100.0}],
            "return_code": 0, "finished": true,
        });
        assert_eq!(read_state(&path), done);
        assert!(!std::fs::read_to_string(&path).unwrap().contains("failed"));

        // Events after the end change nothing.
        progress.emit(ev("/data/sdb.img", 0));
        assert_eq!(read_state(&path), done);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"], "no temporary file left");
    }

    #[tokio::test(start_paused = true)]
    async fn state_file_failure_and_learning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let progress = Progress::new(StateFileSink::new(&path, Vec::<String>::new()).with_pid(7));
        // The first event writes the started state, even without disks.
        progress.emit(ProgressEvent::new(Phase::Connecting, 0, None));
        assert_eq!(
            read_state(&path),
            json!({"started": true, "pid": 7, "disks": [], "disk_count": 0})
        );
        // Items without a total (a VM name on an export event) are not disks.
        progress.emit(ProgressEvent::new(Phase::Exporting, 0, None).with_item("web01"));
        progress.emit(
            ProgressEvent::new(Phase::Exporting, 1, Some(4))
                .with_item("disk-0.vmdk")
                .with_index(0, 3),
        );
        assert_eq!(
            read_state(&path),
            json!({"started": true, "pid": 7, "disk_count": 3,
                   "disks": [{"path": "disk-0.vmdk", "progress": 25.0}]})
        );
        progress.emit(ProgressEvent::new(Phase::Exporting, 0, Some(4)).with_item("disk-1.vmdk"));
        progress.finish(Outcome::failed("lease expired"));
        assert_eq!(
            read_state(&path),
            json!({"started": true, "pid": 7, "disk_count": 3,
                   "disks": [{"path": "disk-0.vmdk", "progress": 25.0},
                             {"path": "disk-1.vmdk", "progress": 0.0}],
                   "return_code": 1, "finished": true, "failed": true})
        );

        // A custom return code through a kept handle.
        let sink = Arc::new(StateFileSink::new(&path, ["x"]).with_pid(1));
        sink.finish(3).unwrap();
        assert_eq!(read_state(&path)["return_code"], 3);
        assert_eq!(read_state(&path)["failed"], true);
        let parsed: StateFile = serde_json::from_value(read_state(&path)).unwrap();
        assert!(parsed.finished && parsed.failed && parsed.return_code == Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn state_file_write_errors_do_not_abort() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("state.json");
        let err = StateFileSink::new(&path, ["a"]).start().unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
        let sink = Arc::new(StateFileSink::new(&path, ["a"]));
        let progress = Progress::new(Arc::clone(&sink));
        for i in 0..=100 {
            progress.emit(ProgressEvent::new(Phase::Transferring, i, Some(100)).with_item("a"));
        }
        progress.finish(Outcome::Succeeded);
        assert!(sink.state().finished);
        assert!(!path.exists());
        // Once the directory exists, the next write succeeds.
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        sink.finish(0).unwrap();
        assert_eq!(read_state(&path)["finished"], true);
    }
}
