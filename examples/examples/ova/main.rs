//! `ova`: inspect, verify, pack, unpack and convert OVF packages and VMDK
//! disks from the command line, one tool where people reach for
//! `ovftool`, `tar`, `sha256sum` and `qemu-img` in turn.
//!
//! ```text
//! cargo run -p hypersdk-examples --example ova -- COMMAND ...
//!
//! ova inspect <package.ova|descriptor.ovf|manifest.mf|disk.vmdk|-> [--json]
//! ova verify  <package.ova|descriptor.ovf|manifest.mf|disk.vmdk|-> [--require-manifest]
//! ova unpack  <package.ova|-> <dir> [--force]
//! ova pack    <descriptor.ovf> <out.ova|-> [--manifest-at-end] [--force]
//! ova convert <disk.vmdk|-> <out.raw> --to raw [--force]
//! ova convert <disk.raw|disk.vmdk> <out.vmdk|-> --to vmdk-stream [--force]
//! ova convert <package.ova|-> <dir> --to raw [--force]
//! ```
//!
//! `-q`/`--quiet` (any command) hides the progress bars, which are drawn on
//! standard error only when it is a terminal.
//!
//! # What each command does
//!
//! - `inspect` shows what the SDK understood: for a package or descriptor
//!   the virtual systems (name, CPUs, memory, firmware, secure boot, OS),
//!   disks (capacity, format, file, size), NICs, files and manifest
//!   entries; for a manifest its entries; for a VMDK its header,
//!   descriptor and extents. An `.ova` file is read through its index (the
//!   headers only, however large the package); from `-` the package is read
//!   to its end, and digests a manifest lists are then checked too.
//! - `verify` reads a package once, as a stream, and checks the `.mf`
//!   digests, the `ovf:size` the descriptor gives each file, and the
//!   structure of each VMDK disk (streamOptimized disks are decoded while
//!   the bytes go by; the grain tables of a hosted sparse disk are read
//!   through the package's index when it is a file). It prints one line per
//!   file, `NAME: OK ...` or `NAME: FAILED: problem`, like `sha256sum -c`.
//!   A descriptor is verified as a directory package (its files and its
//!   `.mf` next to it); a manifest like `sha256sum -c` (the files it lists,
//!   next to it); a VMDK by reading the whole disk.
//! - `unpack` writes every file of a package into `<dir>` (created if
//!   missing). Entry names are checked by the reader (no absolute names, no
//!   `..`, no links or devices) and no path component under `<dir>` may be
//!   a symbolic link, so nothing is written outside `<dir>`. Files are
//!   written to hidden temporary names and linked into place only once the
//!   whole package checked out (digests are checked while writing; a
//!   manifest at the end is checked at the end): on any failure no file of
//!   the package is left, nor a directory the run created. An existing
//!   file is never replaced, unless `--force` (files it replaced before a
//!   late failure, such as a full disk, stay replaced).
//! - `pack` writes the package a descriptor describes, in the order DSP0243
//!   gives: the descriptor, its `.mf` (SHA-256) right after it, then the
//!   files in `References` order (`--manifest-at-end` writes the `.mf` last
//!   and reads each file once instead of twice). The output appears only
//!   when complete, and never replaces a file unless `--force`.
//! - `convert` turns a VMDK (streamOptimized, monolithicSparse,
//!   twoGbMaxExtentSparse, flat) into a sparse raw image, a raw image or a
//!   hosted VMDK into a streamOptimized VMDK, or every VMDK disk of a
//!   package into `<dir>/<disk>.raw`, showing bytes, speed and ETA. Outputs
//!   appear only when complete and never replace a file unless `--force`.
//!   A "raw image" whose first bytes show another container (qcow2, VHD,
//!   VHDX, VDI, gzip, or a VMDK or OVA under another name) is refused
//!   rather than encoded byte for byte.
//!
//! `-` reads standard input where a stream is enough: `inspect`, `verify`
//! and `unpack` of a package, `convert` of a streamOptimized disk or of a
//! package of streamOptimized disks. `pack DESCRIPTOR -` and `convert IN -
//! --to vmdk-stream` write the result to standard output.
//!
//! # Exit status
//!
//! | status | meaning |
//! |---|---|
//! | 0 | all is well |
//! | 1 | integrity failure: a digest or size does not match, a file is missing or not listed in the manifest |
//! | 2 | malformed or unsupported input (not a tar, bad XML, a corrupt or truncated disk), or bad usage |
//! | 3 | I/O: a file could not be read or written (missing, permissions, disk full, exists already) |
//! | 130 | interrupted (Ctrl-C or SIGTERM): temporary files, staging and new directories are removed first |
//!
//! When `verify` finds several problems the status is the smallest of
//! theirs: a digest mismatch explains a disk that does not decode. Every
//! error is one line on standard error: `ova: <file>: <what was wrong>`.
//!
//! # `inspect --json`
//!
//! One JSON object, keys in the order below, every key always present
//! (`null` or `[]` when it does not apply). Its `kind` says which shape it
//! is. Sizes are bytes.
//!
//! For a package (`"ova"`) or descriptor (`"ovf"`):
//!
//! ```text
//! {
//!   "kind": "ova" | "ovf",
//!   "source": "path as given, or - for standard input",
//!   "descriptor": "name of the .ovf",
//!   "ovf_version": "0.9" | "1.x" | "2.x",
//!   "default_configuration": "id" | null,
//!   "configurations": ["id", ...],
//!   "virtual_systems": [VmInfo, ...],      // hypersdk_core::model::VmInfo as serde writes it
//!   "disks": [{"disk_id", "capacity_bytes" (null if unresolved), "capacity" (as written),
//!              "format" (a DiskFormat name), "format_uri", "file_id", "file", "file_size"}],
//!   "networks": [{"name", "description"}],
//!   "files": [{"id", "href", "size" (ovf:size), "compression", "actual_size" (null if absent)}],
//!   "entries": [{"name", "kind": "descriptor"|"manifest"|"certificate"|"file", "size", "offset"}],
//!   "manifest": {"name", "entries": [{"file", "algorithm", "digest"}]} | null,
//!   "problems": ["virtual system 'x': what could not be understood", ...]
//! }
//! ```
//!
//! `entries` lists the archive's members in archive order (`[]` for a
//! descriptor); `actual_size` is the archive entry's size, or for a
//! descriptor the size of the file next to it. When `problems` is not
//! empty (a virtual system the SDK could not turn into a `VmInfo`), the
//! JSON is still printed, each problem is also a line on standard error,
//! and the exit status is 2.
//!
//! For a VMDK (`"vmdk"`):
//!
//! ```text
//! {
//!   "kind": "vmdk", "source",
//!   "create_type": "streamOptimized" | ... | null,
//!   "format": a DiskFormat name,
//!   "capacity_bytes": number | null,       // null: extents missing
//!   "header": {"version", "flags", "capacity_sectors", "grain_sectors", "compressed",
//!              "markers", "gd_offset" (null: at the end), "overhead_sectors",
//!              "descriptor_offset", "descriptor_sectors"} | null,   // null: a text descriptor
//!   "extents": [{"access", "sectors", "kind", "file", "offset", "present"}],
//!   "ddb": {"key": "value", ...}           // sorted by key
//! }
//! ```
//!
//! For a manifest (`"manifest"`): `{"kind", "source", "entries": [{"file",
//! "algorithm", "digest"}]}`.
//!
//! # How it is tested
//!
//! `examples/tests/ova_cli.rs` compiles this file as a module and calls
//! [`run`] in-process with in-memory standard input and output, as a user
//! would run the binary; it also runs every file of the crate's test corpus
//! through `inspect` and `verify` and checks the status expected for each.

mod convert;
mod input;
mod inspect;
mod output;
mod pack;
mod unpack;
mod verify;

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use hypersdk_core::progress::{Outcome, Progress};
use hypersdk_core::{Error, ErrorKind};
use hypersdk_examples::bar::BarSink;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

const EXIT_STATUS: &str = "\
Exit status:
  0  all is well
  1  integrity failure: a digest or size does not match, a file is missing
     or not listed in the manifest
  2  malformed or unsupported input (not a tar, bad XML, a corrupt or
     truncated disk), or bad usage
  3  I/O: a file could not be read or written (missing, permissions, disk
     full, exists already)
  130  interrupted (Ctrl-C, SIGTERM); temporary files are removed first
When verify finds several problems, the status is the smallest of theirs.
Errors are one line on standard error: 'ova: <file>: <what was wrong>'.
'-' reads standard input (or writes standard output) where a stream is enough.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "ova",
    version,
    about = "Inspect, verify, pack, unpack and convert OVF packages and VMDK disks",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// Draw no progress bars (they are drawn only on a terminal anyway).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show what a package, descriptor, manifest or VMDK disk holds.
    Inspect {
        /// An .ova, .ovf, .mf or .vmdk file, or '-' for standard input.
        input: PathBuf,
        /// Print stable JSON (the shape is documented in the example's source).
        #[arg(long)]
        json: bool,
    },
    /// Check digests, sizes and disk structure; one line per file.
    Verify {
        /// An .ova (read once, as a stream), .ovf, .mf or .vmdk file, or '-'.
        input: PathBuf,
        /// Treat a package without a manifest as an integrity failure.
        #[arg(long)]
        require_manifest: bool,
    },
    /// Extract a package's files into a directory, checking digests.
    Unpack {
        /// The .ova file, or '-' for standard input.
        input: PathBuf,
        /// The directory to write into (created if missing).
        dir: PathBuf,
        /// Replace files that exist already.
        #[arg(long)]
        force: bool,
    },
    /// Write the package a descriptor describes (manifest with SHA-256).
    Pack {
        /// The .ovf descriptor; the files it references are next to it.
        descriptor: PathBuf,
        /// The .ova to write, or '-' for standard output.
        output: PathBuf,
        /// Write the manifest last (one read of each file instead of two).
        #[arg(long)]
        manifest_at_end: bool,
        /// Replace the output if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Convert a disk (or every disk of a package) to raw or streamOptimized VMDK.
    Convert {
        /// A .vmdk, a raw image or an .ova, or '-' for standard input.
        input: PathBuf,
        /// The output file, or for a package the output directory.
        output: PathBuf,
        /// The output format.
        #[arg(long, value_enum)]
        to: Target,
        /// Replace outputs that exist already.
        #[arg(long)]
        force: bool,
    },
}

/// What `convert` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// A sparse raw image (for a package: one per disk, in a directory).
    Raw,
    /// A streamOptimized VMDK, as OVAs carry and ESXi imports.
    VmdkStream,
}

/// The exit status of a run; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Status {
    /// All is well.
    Ok = 0,
    /// A digest or size did not match, or a file is missing.
    Integrity = 1,
    /// Malformed or unsupported input, or bad usage.
    Malformed = 2,
    /// A file could not be read or written.
    Io = 3,
    /// Interrupted by SIGINT or SIGTERM (as shells report a signal).
    Interrupted = 130,
}

impl Status {
    /// The process exit code.
    pub(crate) fn code(self) -> u8 {
        self as u8
    }

    /// The status an error of this kind ends a run with.
    pub(crate) fn of(e: &Error) -> Status {
        match e.kind() {
            ErrorKind::Integrity => Status::Integrity,
            ErrorKind::InvalidData
            | ErrorKind::InvalidInput
            | ErrorKind::Unsupported
            | ErrorKind::UnsupportedVersion => Status::Malformed,
            _ => Status::Io,
        }
    }

    /// The status of several problems: the smallest non-zero one.
    pub(crate) fn worst<'a>(errors: impl IntoIterator<Item = &'a Error>) -> Status {
        errors
            .into_iter()
            .map(Status::of)
            .min()
            .unwrap_or(Status::Ok)
    }
}

/// An error that ends a command, with the file it concerns.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The file as the user named it (or `-`).
    pub(crate) file: String,
    /// What was wrong.
    pub(crate) error: Error,
}

impl Failure {
    /// A failure of `file`.
    pub(crate) fn new(file: impl Into<String>, error: Error) -> Self {
        Failure {
            file: file.into(),
            error,
        }
    }
}

/// Attaches the file name to a library error.
pub(crate) trait OrFail<T> {
    /// The error as a [`Failure`] of `file`.
    fn or_fail(self, file: &str) -> Result<T, Failure>;
}

impl<T> OrFail<T> for Result<T, Error> {
    fn or_fail(self, file: &str) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(file, e))
    }
}

/// One line, whatever the error's text holds.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Standard input, output and error of a run, and whether bars may show.
pub(crate) struct Io<'a> {
    /// Where `-` inputs are read from.
    pub(crate) stdin: Option<Box<dyn AsyncRead + Unpin + Send + 'a>>,
    /// Where reports (and `-` outputs) go.
    pub(crate) stdout: Box<dyn AsyncWrite + Unpin + Send + 'a>,
    /// Where errors and notes go.
    pub(crate) stderr: Box<dyn std::io::Write + Send + 'a>,
    /// Never draw progress bars (tests).
    pub(crate) no_bars: bool,
}

impl<'a> Io<'a> {
    /// The process's own standard streams (tokio's: their blocking reads
    /// and writes run on the runtime's blocking threads).
    pub(crate) fn process() -> Io<'static> {
        Io {
            stdin: Some(Box::new(tokio::io::stdin())),
            stdout: Box::new(tokio::io::stdout()),
            stderr: Box::new(std::io::stderr()),
            no_bars: false,
        }
    }

    /// In-memory streams: `stdin` as standard input, output and errors
    /// collected in the given buffers, no bars.
    #[allow(dead_code)] // Used by the tests, which compile this file as a module.
    pub(crate) fn memory(
        stdin: Vec<u8>,
        stdout: &'a mut Vec<u8>,
        stderr: &'a mut Vec<u8>,
    ) -> Io<'a> {
        Io {
            stdin: Some(Box::new(std::io::Cursor::new(stdin))),
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            no_bars: true,
        }
    }

    /// Takes standard input (once).
    pub(crate) fn take_stdin(&mut self) -> Result<Box<dyn AsyncRead + Unpin + Send + 'a>, Failure> {
        self.stdin.take().ok_or_else(|| {
            Failure::new(
                "-",
                Error::invalid_input("standard input can be read only once"),
            )
        })
    }

    /// Writes `text` to standard output.
    pub(crate) async fn out(&mut self, text: &str) -> Result<(), Failure> {
        self.stdout
            .write_all(text.as_bytes())
            .await
            .map_err(|e| Failure::new("-", Error::io("standard output", e)))
    }

    /// Writes one line to standard error (a note, not an error).
    pub(crate) fn note(&mut self, line: &str) {
        // Standard error gone: nothing left to tell anyone.
        let _ = writeln!(self.stderr, "ova: {}", one_line(line));
    }
}

/// Progress bars of a run.
pub(crate) struct Ctx {
    /// Where commands report progress: bars on a terminal, else nowhere.
    pub(crate) progress: Progress,
}

impl Ctx {
    /// Bars when standard error is a terminal and `quiet` is false.
    fn new(quiet: bool) -> Ctx {
        let bars = Arc::new(BarSink::new(quiet));
        let progress = if bars.is_visible() {
            Progress::new(bars)
        } else {
            Progress::none()
        };
        Ctx { progress }
    }
}

/// Runs the command line `args` (the program name first) with `io`, and
/// returns the exit status. Never panics on any input.
pub(crate) async fn run(args: Vec<OsString>, mut io: Io<'_>) -> Status {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &mut io).await,
    };
    let ctx = Ctx::new(cli.quiet || io.no_bars);
    let result = match cli.command {
        Command::Inspect { input, json } => inspect::inspect(&input, json, &mut io).await,
        Command::Verify {
            input,
            require_manifest,
        } => verify::verify(&input, require_manifest, &ctx, &mut io).await,
        Command::Unpack { input, dir, force } => {
            unpack::unpack(&input, &dir, force, &ctx, &mut io).await
        }
        Command::Pack {
            descriptor,
            output,
            manifest_at_end,
            force,
        } => pack::pack(&descriptor, &output, manifest_at_end, force, &ctx, &mut io).await,
        Command::Convert {
            input,
            output,
            to,
            force,
        } => convert::convert(&input, &output, to, force, &ctx, &mut io).await,
    };
    let status = match result {
        Ok(status) => status,
        Err(f) => {
            let status = Status::of(&f.error);
            let _ = writeln!(
                io.stderr,
                "ova: {}: {}",
                f.file,
                one_line(&f.error.to_string())
            );
            status
        }
    };
    ctx.progress.finish(if status == Status::Ok {
        Outcome::Succeeded
    } else {
        Outcome::failed("failed")
    });
    if let Err(e) = io.stdout.flush().await {
        let _ = writeln!(io.stderr, "ova: standard output: {e}");
        return status.max(Status::Io);
    }
    status
}

/// Prints help and version on standard output (status 0), any other
/// command-line problem as one line (status 2).
async fn usage_error(e: clap::Error, io: &mut Io<'_>) -> Status {
    use clap::error::ErrorKind as K;
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand => {
            let text = e.render().to_string();
            if io.out(&text).await.is_err() || io.stdout.flush().await.is_err() {
                return Status::Io;
            }
            if e.kind() == K::DisplayHelpOnMissingArgumentOrSubcommand {
                Status::Malformed
            } else {
                Status::Ok
            }
        }
        _ => {
            let text = e.render().to_string();
            // The message up to the usage lines, on one line.
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more"))
                .collect();
            let message = one_line(&message.join(" "));
            let message = message.trim_start_matches("error: ");
            let _ = writeln!(io.stderr, "ova: usage: {message} (try 'ova --help')");
            Status::Malformed
        }
    }
}

/// Runs the command line on the process's standard streams; Ctrl-C or
/// SIGTERM drops the run (its temporary files are removed) and exits 130.
fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ova: cannot start the async runtime: {e}");
            return ExitCode::from(Status::Io.code());
        }
    };
    let args = std::env::args_os().collect();
    let status = runtime.block_on(async {
        tokio::select! {
            status = run(args, Io::process()) => status,
            () = interrupted() => {
                // The run was dropped: its temporary files, staging and
                // new directories were removed on the way.
                eprintln!("ova: interrupted: temporary files removed");
                Status::Interrupted
            }
        }
    });
    // A read of standard input may still be blocked on a thread: do not
    // wait for it (`run` flushed standard output already).
    runtime.shutdown_background();
    ExitCode::from(status.code())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; never if they cannot be caught.
async fn interrupted() {
    let int = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = int => {}
        () = term => {}
    }
}
