//! Building the Go harness once and caching it under `target/`.
//!
//! The binary lives at `<target>/hypersdk-vcsim/<key>/vcsim-harness`, where
//! `<key>` hashes everything that goes into it: the files under
//! `crates/hypersdk-testkit/vcsim/` (Go sources and `build.sh`), the output
//! of `go version` and the installed govmomi package (its dpkg md5sums list).
//! A change to any of them rebuilds.
//!
//! Concurrency: tests in one process share one build through a
//! `tokio::sync::OnceCell`; separate test binaries (or `cargo test` runs)
//! serialise on an exclusive `flock` of `<target>/hypersdk-vcsim/build.lock`
//! and re-check the cache after taking it. `build.sh` writes to a temporary
//! name and renames, so a binary at the final path is always complete.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::VcsimError;

/// The Debian packages the harness is built from.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "golang-1.19-go",
    "golang-github-vmware-govmomi-dev",
    "golang-github-google-uuid-dev",
];

/// The command that installs [`DEBIAN_PACKAGES`].
pub const INSTALL_COMMAND: &str = "apt-get install -y golang-1.19-go golang-github-vmware-govmomi-dev golang-github-google-uuid-dev";

/// Where Debian installs Go sources.
const GOCODE: &str = "/usr/share/gocode/src";
/// The Go toolchain of `golang-1.19-go`.
const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";
/// The dpkg file list of the govmomi sources, a cheap fingerprint of the
/// installed version.
const GOVMOMI_MD5SUMS: &str = "/var/lib/dpkg/info/golang-github-vmware-govmomi-dev.md5sums";

/// The harness sources in this crate.
fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vcsim")
}

fn missing(what: impl Into<String>) -> VcsimError {
    VcsimError::MissingPrerequisite {
        what: what.into(),
        command: INSTALL_COMMAND.to_owned(),
    }
}

/// Finds the Go toolchain: `$HYPERSDK_GO`, then Debian's
/// `/usr/lib/go-1.19/bin/go`, then `go` on `PATH`.
fn find_go() -> Result<PathBuf, VcsimError> {
    if let Some(go) = std::env::var_os("HYPERSDK_GO") {
        let go = PathBuf::from(go);
        return if go.is_file() {
            Ok(go)
        } else {
            Err(missing(format!(
                "HYPERSDK_GO={} (no such file)",
                go.display()
            )))
        };
    }
    if Path::new(DEBIAN_GO).is_file() {
        return Ok(PathBuf::from(DEBIAN_GO));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let go = dir.join("go");
        if go.is_file() {
            return Ok(go);
        }
    }
    Err(missing(format!(
        "the Go toolchain ({DEBIAN_GO} or `go` on PATH)"
    )))
}

/// Checks that the Go sources the harness needs are installed under `gocode`.
pub(crate) fn check_sources(gocode: &Path) -> Result<(), VcsimError> {
    for (file, package) in [
        (
            "github.com/vmware/govmomi/simulator/simulator.go",
            "golang-github-vmware-govmomi-dev",
        ),
        (
            "github.com/google/uuid/uuid.go",
            "golang-github-google-uuid-dev",
        ),
    ] {
        let path = gocode.join(file);
        if !path.is_file() {
            return Err(missing(format!("{} (package {package})", path.display())));
        }
    }
    Ok(())
}

/// `<target>/hypersdk-vcsim`: `$CARGO_TARGET_DIR` if set (relative to the
/// workspace root), else the workspace's `target/`.
fn cache_root() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        }
        None => workspace.join("target"),
    };
    target.join("hypersdk-vcsim")
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VcsimError {
    let context = context.into();
    move |source| VcsimError::Io { context, source }
}

/// Adds every file under `dir` (sorted, recursive) to `hash`.
fn hash_tree(hash: &mut Sha256, root: &Path, dir: &Path) -> Result<(), VcsimError> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(format!("reading {}", dir.display())))?
        .collect::<Result<_, _>>()
        .map_err(io_err(format!("reading {}", dir.display())))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            hash_tree(hash, root, &path)?;
        } else if path.extension().is_some_and(|e| e == "go" || e == "sh") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            hash.update(rel.to_string_lossy().as_bytes());
            hash.update([0]);
            let mut bytes = Vec::new();
            fs::File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err(format!("reading {}", path.display())))?;
            hash.update(&bytes);
            hash.update([0]);
        }
    }
    Ok(())
}

/// The cache key: a hash of the harness sources, the Go version and the
/// installed govmomi.
fn cache_key(go: &Path) -> Result<String, VcsimError> {
    let mut hash = Sha256::new();
    let dir = harness_dir();
    hash_tree(&mut hash, &dir, &dir)?;
    let version = Command::new(go)
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .map_err(io_err(format!("running {} version", go.display())))?;
    hash.update(&version.stdout);
    match fs::read(GOVMOMI_MD5SUMS) {
        Ok(list) => hash.update(&list),
        Err(_) => {
            // Not a dpkg install: fall back to the simulator sources' sizes
            // and modification times.
            let sim = Path::new(GOCODE).join("github.com/vmware/govmomi/simulator");
            if let Ok(entries) = fs::read_dir(&sim) {
                let mut list: Vec<String> = entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        let mtime = m.modified().ok()?;
                        Some(format!("{:?} {} {:?}", e.file_name(), m.len(), mtime))
                    })
                    .collect();
                list.sort();
                hash.update(list.join("\n").as_bytes());
            }
        }
    }
    Ok(hex::encode(&hash.finalize()[..10]))
}

/// Builds (or finds) the binary. Blocking: run it on a blocking thread.
fn build_blocking() -> Result<PathBuf, VcsimError> {
    let go = find_go()?;
    check_sources(Path::new(GOCODE))?;
    let key = cache_key(&go)?;
    let root = cache_root();
    let bin = root.join(&key).join("vcsim-harness");
    if bin.is_file() {
        return Ok(bin);
    }

    fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
    let lock_path = root.join("build.lock");
    let lock = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("opening {}", lock_path.display())))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
        VcsimError::Io {
            context: format!("locking {}", lock_path.display()),
            source: e.into(),
        }
    })?;
    // Another process may have built it while we waited for the lock.
    if bin.is_file() {
        return Ok(bin);
    }

    let started = Instant::now();
    let script = harness_dir().join("build.sh");
    eprintln!(
        "hypersdk-testkit: building the vcsim harness with {} (once; cached in {})",
        go.display(),
        bin.display()
    );
    let output = Command::new("bash")
        .arg(&script)
        .arg(&bin)
        .env("GO", &go)
        .env("GOCACHE", root.join("gocache"))
        .output()
        .map_err(io_err(format!("running bash {}", script.display())))?;
    if !output.status.success() {
        let mut log = String::from_utf8_lossy(&output.stderr).into_owned();
        log.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(VcsimError::Build {
            command: format!(
                "GO={} bash {} {}",
                go.display(),
                script.display(),
                bin.display()
            ),
            status: output.status.to_string(),
            log,
        });
    }
    eprintln!(
        "hypersdk-testkit: built the vcsim harness in {:.1?}",
        started.elapsed()
    );

    // Drop binaries built from older sources (a running one keeps working:
    // unlinking an executing file is fine on Unix).
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let is_old_key = name.len() == key.len()
                && name != key.as_str()
                && name
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit());
            if is_old_key {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    drop(lock);
    Ok(bin)
}

/// The path of the harness binary, building it first if needed.
///
/// `$HYPERSDK_VCSIM_BIN` overrides the build with a prebuilt binary.
pub(crate) async fn harness_binary() -> Result<PathBuf, VcsimError> {
    static BINARY: OnceCell<PathBuf> = OnceCell::const_new();
    if let Some(bin) = std::env::var_os("HYPERSDK_VCSIM_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(VcsimError::Io {
                context: format!("HYPERSDK_VCSIM_BIN={}", bin.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        return Ok(bin);
    }
    BINARY
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(build_blocking)
                .await
                .map_err(|e| VcsimError::Io {
                    context: "building the vcsim harness".to_owned(),
                    source: std::io::Error::other(e.to_string()),
                })?
        })
        .await
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_sources_name_the_apt_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = check_sources(dir.path()).expect_err("empty gocode must fail");
        let msg = err.to_string();
        assert!(msg.contains(INSTALL_COMMAND), "{msg}");
        assert!(msg.contains("golang-github-vmware-govmomi-dev"), "{msg}");
        assert!(matches!(err, VcsimError::MissingPrerequisite { .. }));
    }

    #[test]
    fn install_command_lists_every_package() {
        for p in DEBIAN_PACKAGES {
            assert!(INSTALL_COMMAND.contains(p));
        }
    }
}
