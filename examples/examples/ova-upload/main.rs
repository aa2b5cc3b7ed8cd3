//! `ova-upload`: upload an OVA to vSphere (ESXi or vCenter) the way
//! ovftool does it — `CreateImportSpec`, `ImportVApp`, the disks streamed
//! from the archive to the NFC lease — with restarts on network failures,
//! a progress bar, and sessions that survive a killed process. The command
//! line is the one of the `ova-esxi-uploader` tool it replaces.
//!
//! ```text
//! cargo run -p hypersdk-examples --example ova-upload -- \
//!     upload appliance.ova esxi01.example.com --datastore datastore1 \
//!     --vm-name web01 --network "VM Network" --username root \
//!     --thumbprint 5E:2A:…:9C --max-retries 0
//! ova-upload list-sessions
//! ova-upload resume [--session-id ID]
//! ova-upload clean-sessions [--all | --older-than 7d]
//! ```
//!
//! | option | |
//! |---|---|
//! | `--datastore`, `-d` | target datastore (required) |
//! | `--vm-name`, `-n` | the VM's name (default: the OVF's) |
//! | `--network` | vSphere network every OVF network is mapped to (default `VM Network`) |
//! | `--username`, `-u` | default `root` |
//! | `--password`, `-p` | or `OVA_UPLOAD_PASSWORD`; asked on the terminal when absent |
//! | `--thumbprint` | trust exactly this certificate (SHA-1 or SHA-256, as vSphere shows it); checked before the password is sent |
//! | `--ca-file` | trust only these CA certificates (PEM) |
//! | `--insecure` | accept any certificate (labs only; off by default, unlike the old tool) |
//! | `--max-retries` | restarts after network failures; `0` = unlimited (default 0) |
//! | `--base-delay`, `--max-delay` | backoff between restarts (`2s`, `2m`; ×1.5 each time, with jitter) |
//! | `--disk-provisioning` | `thin` (default), `thick`, `eagerZeroedThick`, … |
//! | `--no-verify` | do not check the files against the OVA's manifest while uploading |
//! | `--session-dir` | where sessions are kept (default `~/.hypersdk/ova-upload`) |
//! | `--verbose`, `-v` / `--quiet`, `-q` | more / no output besides errors |
//!
//! # What is different from the old tool
//!
//! The old tool `PUT` the OVA's VMDKs raw on the datastore in 32 MiB
//! "chunks" that overwrote each other and created the VM by hand; the VMs
//! did not boot. This one imports through an NFC lease, as vSphere
//! requires: each disk is `POST`ed as a streamOptimized VMDK straight from
//! the archive (monolithicSparse and raw disks are converted on the fly),
//! the lease is kept alive, and the VM is vSphere's own import.
//!
//! # Sessions, and what "resume" can do
//!
//! Each upload is a session (`hypersdk_core::checkpoint`, one JSON file in
//! `--session-dir`, mode 0600, no password in it): the OVA, the target, the
//! files and which were sent, and while an import runs the VM and NFC lease
//! it created on the server, the lease's file URLs, which files were
//! uploaded whole, and the cookie of the vSphere login session (as govc
//! keeps it with `GOVC_PERSIST_SESSION`). While the import runs that file
//! lets whoever can read it act as the logged-in user, until the login
//! session ends. Every run that ends (success, failure, Ctrl-C) logs its
//! login session out and removes the cookie from the file, but one: when
//! `resume` could not continue the earlier lease for a reason that leaves
//! the lease as it was (the OVA unreadable, the network down), the cookie
//! and the lease's state stay, for a later `resume` within the lease's
//! timeout.
//!
//! A run holds its session's lock (`hypersdk_core::checkpoint::SessionLock`,
//! a `<id>.lock` file next to it) until it ends: a `resume` of a session
//! another process is still running (or has stopped) fails at once saying
//! it is in use, the default `resume` skips such sessions, and
//! `clean-sessions` keeps them. So two processes never drive one import,
//! and neither removes the other's VM.
//!
//! A lease belongs to the login session that created it, and vSphere
//! deletes the lease's files (and the VM) when the lease is aborted or
//! expires: 5 minutes without `HttpNfcLeaseProgress`. So after a kill
//! `resume` continues **within the same lease** when it can: it connects
//! with the saved cookie (the password is still asked for, in case the
//! session is gone), checks that the session lives and the lease is still
//! `ready`, renews it, sends only the files the killed run had not finished
//! (a file cut in the middle starts over: NFC cannot continue inside a
//! file), and completes the lease: the same VM. That works while the lease
//! lives (5 minutes after the kill on vSphere) and the login session too
//! (vCenter's default idle timeout is 30 minutes). Otherwise (the session
//! or lease gone, the lease timed out or changed, the continued upload
//! failed and ended the lease) it says so, removes what the killed run left
//! (waiting while vSphere still holds the VM locked) and imports again from
//! the first file. (vcsim keeps such VMs; the cleanup is what makes the new
//! import possible there too.) Any other failure before the lease is
//! touched ends the run with the error and keeps the lease for the next
//! `resume`. A run killed while it completed the lease (the server done,
//! the session file not yet told) is recognised: the VM is kept and the
//! session marked complete. Within one run, a network failure restarts the
//! import, `--max-retries` times or forever.
//!
//! `clean-sessions` logs out the login session a removed session still
//! holds (best effort: a server out of reach ends it at its idle timeout);
//! nobody can continue its lease once the file is gone. It keeps, saying
//! so, the sessions a running `upload` or `resume` holds.
//!
//! Exit status: 0 success, 1 failure, 2 bad usage.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use hypersdk_core::checkpoint::{
    CheckpointStore, ItemState, SessionLock, TransferItem, TransferSession,
};
use hypersdk_core::progress::{Outcome, Progress};
use hypersdk_core::retry::Backoff;
use hypersdk_core::{Error, ErrorKind};
use hypersdk_examples::bar::BarSink;
use hypersdk_ova::archive::OvaIndex;
use hypersdk_vsphere::client::SessionCookie;
use hypersdk_vsphere::import::{
    DiskProvisioning, ImportObserver, ImportReport, ImportTarget, Leftover, OvaImportOptions,
    ReattachState, clean_up_leftover, completed_import, import_ova, lease_unusable, reattach_ova,
};
use hypersdk_vsphere::types::MoRef;
use hypersdk_vsphere::{Client, ClientBuilder};
use serde_json::json;

/// The session kind in checkpoint files.
const KIND: &str = "ova-upload";

/// Upload an OVA to vSphere through an NFC import lease.
#[derive(Debug, Parser)]
#[command(name = "ova-upload", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print what happens (attempts, cleanup, each file).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print nothing but errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Where sessions are kept.
    #[arg(long, global = true, env = "OVA_UPLOAD_SESSION_DIR")]
    session_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upload OVA to the ESXi host or vCenter HOST.
    Upload(Upload),
    /// List the sessions.
    ListSessions,
    /// Resume a session that did not complete (the most recent one by
    /// default).
    Resume(Resume),
    /// Remove sessions: completed ones (default), all, or those older than
    /// a duration.
    CleanSessions(Clean),
}

#[derive(Debug, Args)]
struct Upload {
    /// The OVA file.
    ova: PathBuf,
    /// The ESXi host or vCenter: `host`, `host:port` or `https://host/sdk`.
    host: String,
    /// Target datastore.
    #[arg(short, long)]
    datastore: String,
    /// The VM's name (default: the OVF's).
    #[arg(short = 'n', long)]
    vm_name: Option<String>,
    /// The vSphere network every OVF network is mapped to.
    #[arg(long, default_value = "VM Network")]
    network: String,
    /// Disk provisioning (`thin`, `thick`, `eagerZeroedThick`, …).
    #[arg(long, default_value = "thin")]
    disk_provisioning: String,
    /// Do not check the files against the OVA's manifest while uploading
    /// (saves the hashing for an archive verified already).
    #[arg(long)]
    no_verify: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Debug, Args)]
struct Resume {
    /// The session to resume (default: the most recent incomplete one).
    #[arg(long)]
    session_id: Option<String>,
    #[command(flatten)]
    conn: ResumeConn,
}

#[derive(Debug, Args)]
struct Clean {
    /// Remove every session, complete or not.
    #[arg(long, conflicts_with = "older_than")]
    all: bool,
    /// Remove sessions last saved longer ago than this (`7d`, `12h`).
    #[arg(long)]
    older_than: Option<String>,
}

/// Connection and retry options of `upload`.
#[derive(Debug, Args, Clone)]
struct Conn {
    /// User name.
    #[arg(short, long, default_value = "root")]
    username: String,
    #[command(flatten)]
    common: ConnCommon,
}

/// What `resume` may override (the rest comes from the session).
#[derive(Debug, Args, Clone)]
struct ResumeConn {
    /// User name (default: the session's).
    #[arg(short, long)]
    username: Option<String>,
    #[command(flatten)]
    common: ConnCommon,
}

#[derive(Debug, Args, Clone)]
struct ConnCommon {
    /// Password (asked on the terminal when absent).
    #[arg(short, long, env = "OVA_UPLOAD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Trust exactly the certificate with this SHA-1 or SHA-256 thumbprint.
    #[arg(long)]
    thumbprint: Option<String>,
    /// Trust only the CA certificates in this PEM file.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any certificate (no protection against an impostor).
    #[arg(long)]
    insecure: bool,
    /// Restarts after network failures; 0 = unlimited.
    #[arg(long, default_value_t = 0)]
    max_retries: u32,
    /// First delay between restarts.
    #[arg(long, default_value = "2s")]
    base_delay: String,
    /// Longest delay between restarts.
    #[arg(long, default_value = "2m")]
    max_delay: String,
}

/// A failure, with the exit status it maps to.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        // The error and its causes, each said once.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = s.source();
        }
        Failure { code: 1, message }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

/// Parses `500ms`, `2s`, `2m`, `1h`, `7d` (a bare number is seconds).
fn parse_duration(s: &str) -> std::result::Result<Duration, Failure> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        usage(format!(
            "'{s}' is not a duration (e.g. 500ms, 2s, 2m, 1h, 7d)"
        ))
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(usage(format!("'{s}': unknown unit (ms, s, m, h, d)"))),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| usage(format!("'{s}' is out of range")))
}

fn default_session_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".hypersdk").join("ova-upload"),
        None => PathBuf::from(".ova-upload-sessions"),
    }
}

/// Output that respects `--quiet` and `--verbose`, printed above the bars.
#[derive(Debug)]
struct Out {
    bars: Arc<BarSink>,
    quiet: bool,
    verbose: bool,
}

impl Out {
    fn info(&self, line: &str) {
        if !self.quiet {
            self.bars.println(line);
        }
    }
    fn detail(&self, line: &str) {
        if self.verbose {
            self.bars.println(line);
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ova-upload: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(run(cli));
    std::process::exit(code);
}

/// Runs a parsed command line; returns the exit status.
async fn run(cli: Cli) -> i32 {
    match dispatch(cli).await {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("ova-upload: {}", f.message);
            f.code
        }
    }
}

async fn dispatch(cli: Cli) -> std::result::Result<(), Failure> {
    let bars = Arc::new(BarSink::new(cli.quiet));
    let out = Out {
        bars,
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    let dir = cli.session_dir.clone().unwrap_or_else(default_session_dir);
    let store = CheckpointStore::open(&dir)?;
    match cli.command {
        Command::Upload(u) => upload(&out, &store, u).await,
        Command::ListSessions => list_sessions(&store),
        Command::Resume(r) => resume(&out, &store, r).await,
        Command::CleanSessions(c) => clean_sessions(&out, &store, c).await,
    }
}

/// What a session records about its import (its `metadata`).
#[derive(Debug, Clone)]
struct Job {
    host: String,
    username: String,
    datastore: String,
    vm_name: Option<String>,
    network: String,
    disk_provisioning: String,
    thumbprint: Option<String>,
    ca_file: Option<PathBuf>,
    insecure: bool,
    verify: bool,
}

impl Job {
    fn to_metadata(&self, session: &mut TransferSession) {
        let m = &mut session.metadata;
        m.insert("host".into(), json!(self.host));
        m.insert("username".into(), json!(self.username));
        m.insert("datastore".into(), json!(self.datastore));
        m.insert("vm_name".into(), json!(self.vm_name));
        m.insert("network".into(), json!(self.network));
        m.insert("disk_provisioning".into(), json!(self.disk_provisioning));
        m.insert("thumbprint".into(), json!(self.thumbprint));
        m.insert("ca_file".into(), json!(self.ca_file));
        m.insert("insecure".into(), json!(self.insecure));
        m.insert("verify".into(), json!(self.verify));
    }

    fn from_session(session: &TransferSession) -> std::result::Result<Job, Failure> {
        let m = &session.metadata;
        let text = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let need = |k: &str| {
            text(k).ok_or_else(|| {
                Failure::from(Error::invalid_data(
                    format!("session {}", session.id),
                    format!("'{k}' is missing from its metadata"),
                ))
            })
        };
        Ok(Job {
            host: need("host")?,
            username: need("username")?,
            datastore: need("datastore")?,
            vm_name: text("vm_name"),
            network: text("network").unwrap_or_else(|| "VM Network".into()),
            disk_provisioning: text("disk_provisioning").unwrap_or_else(|| "thin".into()),
            thumbprint: text("thumbprint"),
            ca_file: text("ca_file").map(PathBuf::from),
            insecure: m.get("insecure").and_then(|v| v.as_bool()).unwrap_or(false),
            verify: m.get("verify").and_then(|v| v.as_bool()).unwrap_or(true),
        })
    }
}

/// The leftover a session records, if any.
fn leftover_of(session: &TransferSession) -> Option<Leftover> {
    let l = session.metadata.get("leftover")?;
    let entity = MoRef::new(l["entity_type"].as_str()?, l["entity"].as_str()?);
    let lease = match (l["lease_type"].as_str(), l["lease"].as_str()) {
        (Some(t), Some(v)) => Some(MoRef::new(t, v)),
        _ => None,
    };
    Some(Leftover {
        entity,
        name: l["name"].as_str()?.to_owned(),
        lease,
    })
}

/// The metadata key of the import's [`ReattachState`].
const REATTACH: &str = "reattach";
/// The metadata key of the login session's cookie (a secret while the
/// session lives).
const LOGIN_SESSION: &str = "vsphere_session";

/// The import state a session records, if any (and readable).
fn state_of(session: &TransferSession) -> Option<ReattachState> {
    serde_json::from_value(session.metadata.get(REATTACH)?.clone()).ok()
}

/// The login session's cookie a session records, if any (and valid).
fn cookie_of(session: &TransferSession) -> Option<SessionCookie> {
    SessionCookie::new(session.metadata.get(LOGIN_SESSION)?.as_str()?).ok()
}

/// What a session records to continue its import within its lease: the
/// state and the login session's cookie, when both are there and valid.
#[cfg(test)]
fn reattach_of(session: &TransferSession) -> Option<(ReattachState, SessionCookie)> {
    Some((state_of(session)?, cookie_of(session)?))
}

/// Forgets the VM, lease and login session a session recorded.
fn forget_leftover(s: &mut TransferSession) {
    s.metadata.remove("leftover");
    s.metadata.remove(REATTACH);
    s.metadata.remove(LOGIN_SESSION);
}

/// Forgets the login session (logged out, or about to be): its cookie,
/// and the import state that only it could continue, unless that state
/// says the lease was being completed (what a later `resume` needs to
/// tell a completed import from a leftover, whatever the session).
fn forget_login(s: &mut TransferSession) {
    s.metadata.remove(LOGIN_SESSION);
    if !state_of(s).is_some_and(|st| st.completing) {
        s.metadata.remove(REATTACH);
    }
}

/// Keeps the session file up to date as the import goes.
#[derive(Debug)]
struct Recorder {
    store: CheckpointStore,
    session: Mutex<TransferSession>,
    out: Arc<Out>,
    /// For the login session's current cookie.
    client: Client,
}

impl Recorder {
    fn update(&self, f: impl FnOnce(&mut TransferSession)) {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
        // Small synchronous writes (two fsyncs) between transfers.
        let saved = tokio::task::block_in_place(|| self.store.save(&mut s));
        if let Err(e) = saved {
            self.out
                .info(&format!("warning: cannot save the session: {e}"));
        }
    }

    fn snapshot(&self) -> TransferSession {
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ImportObserver for Recorder {
    fn lease_ready(&self, attempt: u32, leftover: &Leftover) {
        self.out.detail(&format!(
            "attempt {attempt}: {} '{}' created, lease {} ready",
            leftover.entity.value,
            leftover.name,
            leftover
                .lease
                .as_ref()
                .map(|l| l.value.as_str())
                .unwrap_or("-")
        ));
        self.update(|s| {
            s.metadata.insert(
                "leftover".into(),
                json!({
                    "entity_type": leftover.entity.kind,
                    "entity": leftover.entity.value,
                    "name": leftover.name,
                    "lease_type": leftover.lease.as_ref().map(|l| l.kind.clone()),
                    "lease": leftover.lease.as_ref().map(|l| l.value.clone()),
                }),
            );
            s.metadata.insert("attempt".into(), json!(attempt));
            for item in &mut s.items {
                item.completed = Default::default();
                item.state = ItemState::Pending;
                item.error = None;
            }
        });
    }

    fn file_uploaded(&self, path: &str, bytes: u64) {
        self.out.detail(&format!("uploaded {path} ({bytes} bytes)"));
        self.update(|s| {
            if let Some(item) = s.item_mut(path) {
                item.mark_all_done();
            }
        });
    }

    fn reattach_state(&self, state: &ReattachState) {
        let value = match serde_json::to_value(state) {
            Ok(v) => v,
            Err(e) => {
                self.out
                    .info(&format!("warning: cannot record the lease state: {e}"));
                return;
            }
        };
        let cookie = self.client.session_cookie();
        self.update(|s| {
            s.metadata.insert(REATTACH.into(), value);
            match &cookie {
                Some(c) => {
                    s.metadata.insert(LOGIN_SESSION.into(), json!(c.expose()));
                }
                None => {
                    s.metadata.remove(LOGIN_SESSION);
                }
            }
        });
    }

    fn attempt_failed(&self, attempt: u32, error: &Error, retrying: bool) {
        let what = if retrying {
            "starting the import over"
        } else {
            "giving up"
        };
        self.out
            .info(&format!("attempt {attempt} failed ({error}); {what}"));
        self.update(|s| {
            s.metadata
                .insert("last_error".into(), json!(error.to_string()));
        });
    }

    fn cleaned_up(&self, leftover: &Leftover, kept: bool) {
        self.out.detail(&format!(
            "{} {} '{}'",
            if kept { "kept" } else { "removed" },
            leftover.entity.value,
            leftover.name
        ));
        self.update(|s| {
            if kept {
                // Kept for inspection: nothing to continue.
                s.metadata.remove(REATTACH);
                s.metadata.remove(LOGIN_SESSION);
            } else {
                forget_leftover(s);
            }
        });
    }

    fn finished(&self, vm: &MoRef) {
        self.update(|s| {
            forget_leftover(s);
            s.metadata.insert("vm".into(), json!(vm.value));
            for item in &mut s.items {
                item.mark_all_done();
            }
        });
    }
}

/// The client options of `job`'s server and TLS trust, no credentials.
fn builder(job: &Job) -> std::result::Result<ClientBuilder, Failure> {
    let mut b = Client::builder(&job.host);
    if let Some(t) = &job.thumbprint {
        b = b.pin_thumbprint(t);
    }
    if let Some(f) = &job.ca_file {
        let pem = std::fs::read(f)
            .map_err(|e| Failure::from(Error::io(format!("CA file '{}'", f.display()), e)))?;
        b = b.ca_pem(pem);
    }
    if job.insecure {
        b = b.danger_accept_invalid_certs();
    }
    Ok(b)
}

/// Connects with the password, continuing the login session of `saved`
/// while the server still knows it.
async fn connect(
    out: &Out,
    job: &Job,
    common: &ConnCommon,
    saved: Option<SessionCookie>,
) -> std::result::Result<Client, Failure> {
    let password = match &common.password {
        Some(p) => p.clone(),
        None => {
            if !std::io::stdin().is_terminal() {
                return Err(usage(
                    "no password: pass --password, set OVA_UPLOAD_PASSWORD or run on a terminal",
                ));
            }
            out.bars
                .suspend(|| {
                    rpassword::prompt_password(format!(
                        "Password for {}@{}: ",
                        job.username, job.host
                    ))
                })
                .map_err(|e| usage(format!("cannot read the password: {e}")))?
        }
    };
    let mut b = builder(job)?.credentials(&job.username, &password);
    if let Some(cookie) = saved {
        b = b.session_cookie(cookie);
    }
    Ok(b.connect().await?)
}

fn backoff(common: &ConnCommon) -> std::result::Result<Backoff, Failure> {
    let b = Backoff::default()
        .with_initial(parse_duration(&common.base_delay)?)
        .with_max_delay(parse_duration(&common.max_delay)?)
        .with_multiplier(1.5)
        .with_jitter(0.2)
        .with_max_attempts(match common.max_retries {
            0 => None,
            n => Some(n.saturating_add(1)),
        });
    b.validate().map_err(|e| usage(e.to_string()))?;
    Ok(b)
}

async fn upload(out: &Out, store: &CheckpointStore, u: Upload) -> std::result::Result<(), Failure> {
    if u.conn.common.insecure
        && (u.conn.common.thumbprint.is_some() || u.conn.common.ca_file.is_some())
    {
        return Err(usage(
            "--insecure cannot be combined with --thumbprint or --ca-file",
        ));
    }
    let ova = std::path::absolute(&u.ova)
        .map_err(|e| Failure::from(Error::io(format!("'{}'", u.ova.display()), e)))?;
    u.disk_provisioning
        .parse::<DiskProvisioning>()
        .map_err(|e| usage(e.to_string()))?;
    let index = OvaIndex::open(&ova).await?;
    let job = Job {
        host: u.host.clone(),
        username: u.conn.username.clone(),
        datastore: u.datastore.clone(),
        vm_name: u.vm_name.clone(),
        network: u.network.clone(),
        disk_provisioning: u.disk_provisioning.clone(),
        thumbprint: u.conn.common.thumbprint.clone(),
        ca_file: u.conn.common.ca_file.clone(),
        insecure: u.conn.common.insecure,
        verify: !u.no_verify,
    };
    let mut session = TransferSession::new(
        KIND,
        ova.display().to_string(),
        format!(
            "{} [{}]",
            hypersdk_core::error::redact_url(&job.host),
            job.datastore
        ),
    );
    job.to_metadata(&mut session);
    for r in index.envelope().references() {
        let size = index.entry(&r.href).map_or(0, |e| e.size);
        session
            .add_item(TransferItem::new(r.href.clone(), size))
            .map_err(Failure::from)?;
    }
    // Held until this run ends: no `resume` or `clean-sessions` can take
    // the session meanwhile.
    let _lock = store.lock(&session.id)?;
    store.save(&mut session)?;
    out.info(&format!("session {}", session.id));
    run_job(out, store, session, job, &u.conn.common).await
}

/// The session `resume` continues, locked: the one named, or the most
/// recent incomplete one that no other process is driving.
fn session_to_resume(
    out: &Out,
    store: &CheckpointStore,
    id: Option<&str>,
) -> std::result::Result<(TransferSession, SessionLock), Failure> {
    if let Some(id) = id {
        // Locked first, then read: what the previous holder last saved.
        let lock = store.lock(id)?;
        return Ok((store.load(id)?, lock));
    }
    let mut open: Vec<TransferSession> = store
        .list()?
        .into_iter()
        .filter_map(|e| e.session.ok())
        .filter(|s| s.kind == KIND && !is_done(s))
        .collect();
    open.sort_by_key(|s| std::cmp::Reverse(s.updated_at));
    let mut busy = None;
    for s in open {
        match store.lock(&s.id) {
            Ok(lock) => {
                let fresh = store.load(&s.id)?;
                if is_done(&fresh) {
                    continue;
                }
                return Ok((fresh, lock));
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                out.info(&format!(
                    "session {} is in use by another process: not resuming it",
                    s.id
                ));
                busy.get_or_insert(e);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(match busy {
        Some(e) => e.into(),
        None => usage("no session to resume (see list-sessions)"),
    })
}

async fn resume(out: &Out, store: &CheckpointStore, r: Resume) -> std::result::Result<(), Failure> {
    // Held until this run ends.
    let (session, _lock) = session_to_resume(out, store, r.session_id.as_deref())?;
    if session.kind != KIND {
        return Err(usage(format!(
            "session {} is not an ova-upload session",
            session.id
        )));
    }
    if is_done(&session) {
        out.info(&format!("session {} is already complete", session.id));
        return Ok(());
    }
    let mut job = Job::from_session(&session)?;
    if let Some(u) = &r.conn.username {
        job.username = u.clone();
    }
    if r.conn.common.thumbprint.is_some() {
        job.thumbprint = r.conn.common.thumbprint.clone();
    }
    if r.conn.common.ca_file.is_some() {
        job.ca_file = r.conn.common.ca_file.clone();
    }
    job.insecure |= r.conn.common.insecure;
    out.info(&format!(
        "resuming session {} ({})",
        session.id, session.source
    ));
    run_job(out, store, session, job, &r.conn.common).await
}

fn is_done(s: &TransferSession) -> bool {
    s.metadata.get("state").and_then(|v| v.as_str()) == Some("completed")
}

/// Connects; continues the import an earlier run left within its lease
/// when it can, else removes what that run left and imports; records the
/// end. The caller holds the session's lock.
///
/// Every exit logs the login session out and removes its cookie from the
/// session file (the process exits right after, so a dropped client's
/// background logout would never run), except one: when continuing the
/// earlier lease failed before anything was touched (the OVA unreadable,
/// the network down), the lease and the login session are handed to a
/// later `resume`, which can still continue within the lease's timeout.
async fn run_job(
    out: &Out,
    store: &CheckpointStore,
    session: TransferSession,
    job: Job,
    common: &ConnCommon,
) -> std::result::Result<(), Failure> {
    let started = Instant::now();
    let backoff = backoff(common)?;
    let provisioning: DiskProvisioning = job
        .disk_provisioning
        .parse()
        .map_err(|e: Error| usage(e.to_string()))?;
    let leftover = leftover_of(&session);
    let state = leftover.as_ref().and_then(|_| state_of(&session));
    let saved = state.as_ref().and_then(|_| cookie_of(&session));
    let client = connect(out, &job, common, saved).await?;
    let out = Arc::new(Out {
        bars: Arc::clone(&out.bars),
        quiet: out.quiet,
        verbose: out.verbose,
    });
    let recorder = Arc::new(Recorder {
        store: store.clone(),
        session: Mutex::new(session),
        out: Arc::clone(&out),
        client: client.clone(),
    });
    let source = PathBuf::from(&recorder.snapshot().source);
    let progress = Progress::new(Arc::clone(&out.bars));
    let mut opts = OvaImportOptions::new(ImportTarget::datastore(job.datastore.clone()))
        .with_default_network(job.network.clone())
        .with_disk_provisioning(provisioning)
        .with_backoff(backoff)
        .with_verify_manifest(job.verify)
        .with_progress(progress.clone())
        .with_observer(recorder.clone());
    if let Some(n) = &job.vm_name {
        opts = opts.with_name(n.clone());
    }
    // Set when the earlier lease is handed on to a later `resume`.
    let handover = AtomicBool::new(false);
    let work = async {
        if let Some(leftover) = &leftover {
            let continued = match &state {
                Some(state) if client.session_reused() => {
                    match continue_in_lease(&out, &client, &recorder, state, &source, &opts).await {
                        Ok(report) => report,
                        Err(e) => {
                            handover.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                }
                Some(state) if state.completing => {
                    // The run was killed while it completed the lease: the
                    // VM may be imported already, whatever the session.
                    match completed_import(&client, state).await? {
                        Some(report) => {
                            recorder.finished(&report.vm);
                            Some(report)
                        }
                        None => {
                            out.info(
                                "the earlier run's login session is gone (expired or logged \
                                 out), and its lease with it: falling back to a full re-import",
                            );
                            None
                        }
                    }
                }
                Some(_) => {
                    out.info(
                        "the earlier run's login session is gone (expired or logged out), and \
                         its lease with it: falling back to a full re-import",
                    );
                    None
                }
                None => {
                    out.info(
                        "the earlier run recorded no lease to continue: falling back to a full \
                         re-import",
                    );
                    None
                }
            };
            if let Some(report) = continued {
                let how = if report.completed_earlier {
                    "completed_earlier"
                } else {
                    "reattached"
                };
                recorder.update(|s| {
                    s.metadata.insert("last_resume".into(), json!(how));
                });
                return Ok(report);
            }
            recorder.update(|s| {
                s.metadata.insert("last_resume".into(), json!("reimported"));
            });
            if leftover_of(&recorder.snapshot()).is_some() {
                out.info(&format!(
                    "removing what the earlier run left: {} '{}' (waiting while its lease holds it)",
                    leftover.entity.value, leftover.name
                ));
                let removed =
                    clean_up_leftover(&client, leftover, Duration::from_secs(600)).await?;
                out.detail(if removed {
                    "removed the half-imported VM"
                } else {
                    "the half-imported VM is already gone"
                });
            }
            recorder.update(forget_leftover);
        }
        import_ova(&client, &source, &opts).await
    };
    let result = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => {
            progress.finish(Outcome::failed("interrupted"));
            out.info("interrupted: aborting the lease and removing the half-imported VM");
            // The import's drop guards abort and destroy in the background.
            tokio::time::sleep(Duration::from_secs(3)).await;
            // The lease is gone: nothing to continue, no session to keep.
            log_out(&out, &client, &recorder).await;
            return Err(Failure { code: 130, message: format!("interrupted; `ova-upload resume --session-id {}` starts it again", recorder.snapshot().id) });
        }
    };
    progress.finish(Outcome::from_result(&result));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let id = recorder.snapshot().id;
            recorder.update(|s| {
                s.metadata.insert("last_error".into(), json!(e.to_string()));
            });
            let mut f = Failure::from(e);
            if handover.load(Ordering::Relaxed) {
                // Not logged out: the lease lives only in this login
                // session, which the saved cookie lets `resume` continue.
                client.leave_session();
                let timeout = state.as_ref().map_or(300, |s| s.lease_timeout_secs);
                f.message.push_str(&format!(
                    " (session {id}: the earlier run's lease is left as it was; `ova-upload \
                     resume --session-id {id}` continues it while it lives, {timeout} s from its \
                     last renewal)"
                ));
            } else {
                log_out(&out, &client, &recorder).await;
                f.message.push_str(&format!(
                    " (session {id}: `ova-upload resume --session-id {id}` tries again)"
                ));
            }
            return Err(f);
        }
    };
    recorder.update(|s| {
        s.metadata.insert("state".into(), json!("completed"));
        s.metadata.insert("vm".into(), json!(report.vm.value));
        s.metadata.remove("last_error");
        forget_leftover(s);
    });
    let bytes: u64 = report.files.iter().map(|f| f.bytes_sent).sum();
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    for w in &report.warnings {
        out.detail(&format!("vSphere warning: {w}"));
    }
    if report.completed_earlier {
        out.info(&format!(
            "the earlier run had completed the import of '{}' as {} already (it was killed \
             before it could record so): nothing to send",
            report.name, report.vm.value
        ));
        log_out(&out, &client, &recorder).await;
        return Ok(());
    }
    if !report.skipped.is_empty() {
        out.info(&format!(
            "not sent again (uploaded whole by the earlier run): {}",
            report.skipped.join(", ")
        ));
    }
    out.info(&format!(
        "imported '{}' as {} ({} files, {:.1} MiB in {:.1} s, {:.1} MiB/s, {} attempt{})",
        report.name,
        report.vm.value,
        report.files.len(),
        bytes as f64 / 1048576.0,
        secs,
        bytes as f64 / 1048576.0 / secs,
        report.attempts,
        if report.attempts == 1 { "" } else { "s" }
    ));
    log_out(&out, &client, &recorder).await;
    Ok(())
}

/// Removes the login session's cookie from the session file, then logs
/// the session out (best effort).
async fn log_out(out: &Out, client: &Client, recorder: &Recorder) {
    let recorded = recorder.snapshot().metadata;
    if recorded.contains_key(LOGIN_SESSION) || recorded.contains_key(REATTACH) {
        recorder.update(forget_login);
    }
    if let Err(e) = client.logout().await {
        out.detail(&format!("logout failed: {e}"));
    }
}

/// Continues the earlier run's import within its lease. `Ok(None)` (with
/// the reason said) when that cannot be done and a full re-import is
/// needed: the lease is unusable, or continuing it failed and ended it
/// (aborted, its VM removed). Any other failure came before the lease was
/// touched (the OVA unreadable, the network down): it is returned, and the
/// lease can still be continued later.
async fn continue_in_lease(
    out: &Out,
    client: &Client,
    recorder: &Recorder,
    state: &ReattachState,
    source: &std::path::Path,
    opts: &OvaImportOptions,
) -> std::result::Result<Option<ImportReport>, Error> {
    let done: Vec<&str> = state
        .files
        .iter()
        .filter(|f| f.finished)
        .map(|f| f.path.as_str())
        .collect();
    let left: Vec<&str> = state.remaining().map(|f| f.path.as_str()).collect();
    out.info(&format!(
        "continuing the earlier run's import within its lease {} ({} '{}'): {}; sending {}",
        state.lease.value,
        state.entity.value,
        state.name,
        if done.is_empty() {
            "no file was finished".to_owned()
        } else {
            format!("skipping {} (uploaded whole)", done.join(", "))
        },
        if left.is_empty() {
            "nothing more".to_owned()
        } else {
            left.join(", ")
        }
    ));
    let e = match reattach_ova(client, state, source, opts).await {
        Ok(report) => return Ok(Some(report)),
        Err(e) => e,
    };
    let recorded = recorder.snapshot().metadata;
    let why = if lease_unusable(&e).is_some() {
        "the lease cannot be continued"
    } else if !recorded.contains_key(REATTACH) && !recorded.contains_key("vm") {
        // The observer heard the lease end with its VM removed
        // (`cleaned_up`), not completed by someone else (`finished`).
        "continuing the lease failed and ended it"
    } else {
        return Err(e);
    };
    out.info(&format!(
        "{why} ({}); falling back to a full re-import",
        Failure::from(e).message
    ));
    Ok(None)
}

fn list_sessions(store: &CheckpointStore) -> std::result::Result<(), Failure> {
    let entries = store.list()?;
    if entries.is_empty() {
        println!("no sessions in {}", store.dir().display());
        return Ok(());
    }
    for e in entries {
        match e.session {
            Ok(s) if s.kind == KIND => {
                let state = if is_done(&s) {
                    "completed"
                } else if s.metadata.contains_key("leftover") {
                    "interrupted"
                } else {
                    "incomplete"
                };
                let vm = s
                    .metadata
                    .get("vm_name")
                    .and_then(|v| v.as_str())
                    .unwrap_or("(OVF name)");
                let files = s.items.iter().filter(|i| i.is_complete()).count();
                println!(
                    "{}  {:<11} {}  -> {} as {}  files {}/{}  updated {}",
                    s.id,
                    state,
                    s.source,
                    s.target,
                    vm,
                    files,
                    s.items.len(),
                    s.updated_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            Ok(_) => {}
            Err(err) => println!("{}  unreadable: {err}", e.id),
        }
    }
    Ok(())
}

/// Logs out the login session `s` saved (best effort), so that it does not
/// outlive the session file that could continue it.
async fn log_out_saved(out: &Out, s: &TransferSession) {
    let Some(cookie) = s
        .metadata
        .get(LOGIN_SESSION)
        .and_then(|v| v.as_str())
        .and_then(|c| SessionCookie::new(c).ok())
    else {
        return;
    };
    let Ok(job) = Job::from_session(s) else {
        return;
    };
    let connected = match builder(&job) {
        Ok(b) => {
            b.session_cookie(cookie)
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(15))
                .retry(Backoff::none())
                .connect()
                .await
        }
        Err(f) => Err(Error::invalid_input(f.message)),
    };
    match connected {
        Ok(client) => match client.logout().await {
            Ok(()) => out.info(&format!(
                "logged out the vSphere login session session {} had saved",
                s.id
            )),
            Err(e) => out.info(&format!(
                "warning: logging out the vSphere login session of session {} failed ({e}); \
                 it ends at the server's idle timeout",
                s.id
            )),
        },
        // No credentials are given: a session the server no longer knows
        // cannot be replaced, which is what this says.
        Err(e) if e.kind() == hypersdk_core::ErrorKind::Unauthenticated => out.detail(&format!(
            "the vSphere login session of session {} had ended already",
            s.id
        )),
        Err(e) => out.info(&format!(
            "warning: cannot reach {} to log out the login session of session {} ({e}); it ends \
             at the server's idle timeout",
            hypersdk_core::error::redact_url(&job.host),
            s.id
        )),
    }
}

async fn clean_sessions(
    out: &Out,
    store: &CheckpointStore,
    c: Clean,
) -> std::result::Result<(), Failure> {
    let age = c.older_than.as_deref().map(parse_duration).transpose()?;
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    for e in store.list()? {
        let s = match e.session {
            Ok(s) => s,
            Err(err) => {
                out.info(&format!(
                    "kept {} (unreadable: {err}; remove it by hand)",
                    e.id
                ));
                continue;
            }
        };
        let wanted = match age {
            Some(age) => now
                .duration_since(s.updated_at.into())
                .is_ok_and(|since| since > age),
            None => s.kind == KIND && (c.all || is_done(&s)),
        };
        if !wanted {
            continue;
        }
        // A run (`upload`, `resume`) holds its session's lock until it
        // ends: its session, login session and VM are not ours to touch.
        let lock = match store.lock(&s.id) {
            Ok(l) => l,
            Err(err) if err.kind() == ErrorKind::Conflict => {
                out.info(&format!(
                    "kept {}: it is in use by another process (an upload or resume still runs)",
                    s.id
                ));
                continue;
            }
            Err(err) => return Err(err.into()),
        };
        if s.kind == KIND {
            if s.metadata.contains_key("leftover") {
                out.info(&format!(
                    "note: session {} recorded a half-imported VM on the server; it stays there",
                    s.id
                ));
            }
            log_out_saved(out, &s).await;
        }
        match lock.remove_session() {
            Ok(()) => removed.push(s.id),
            Err(err) if err.is_not_found() => {}
            Err(err) => out.info(&format!("kept {}: {err}", s.id)),
        }
    }
    out.info(&format!("removed {} session(s)", removed.len()));
    Ok(())
}

#[cfg(test)]
mod tests;
