//! Outputs: files written under temporary names and put in place only when
//! complete, never over an existing file unless asked; and sizes for
//! people.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use hypersdk_core::Error;

/// A hidden temporary name next to `target`, unique in this process. It
/// starts with at most [`TEMP_NAME_PREFIX`] bytes of the target's name, so
/// that a name near the file system's limit still gets a temporary one.
pub(crate) fn temp_path(target: &Path) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut name = target
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    if name.len() > TEMP_NAME_PREFIX {
        let mut end = TEMP_NAME_PREFIX;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    target.with_file_name(format!(".{name}.ova-{}-{n}.tmp", std::process::id()))
}

/// How much of a target's name its temporary name keeps.
pub(crate) const TEMP_NAME_PREFIX: usize = 64;

/// Directories a run created, removed again (when empty, deepest first)
/// when this is dropped, unless [`kept`](Self::keep): a failed or
/// interrupted run leaves no new directory behind.
#[derive(Debug, Default)]
pub(crate) struct CreatedDirs(Vec<PathBuf>);

impl CreatedDirs {
    /// Creates `dir` and any missing parents, remembering those it made.
    pub(crate) async fn create_all(&mut self, dir: &Path) -> Result<(), Error> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
            match tokio::fs::symlink_metadata(d).await {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(d),
                Err(e) => return Err(Error::io(format!("directory '{}'", d.display()), e)),
            }
            at = d.parent();
        }
        for d in missing.into_iter().rev() {
            match tokio::fs::create_dir(d).await {
                Ok(()) => self.0.push(d.to_path_buf()),
                // Made meanwhile by someone else: theirs, not ours.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(format!("directory '{}'", d.display()), e)),
            }
        }
        match tokio::fs::metadata(dir).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::already_exists(format!(
                "'{}', a file where a directory is needed,",
                dir.display()
            ))),
            Err(e) => Err(Error::io(format!("directory '{}'", dir.display()), e)),
        }
    }

    /// Creates the single directory `dir` (its parent exists).
    pub(crate) async fn create(&mut self, dir: &Path) -> Result<(), Error> {
        tokio::fs::create_dir(dir)
            .await
            .map_err(|e| Error::io(format!("directory '{}'", dir.display()), e))?;
        self.0.push(dir.to_path_buf());
        Ok(())
    }

    /// Keeps the directories: the run succeeded.
    pub(crate) fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for CreatedDirs {
    fn drop(&mut self) {
        while let Some(d) = self.0.pop() {
            // Only when empty: a file someone else put there stays.
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Refuses an existing `target` (anything at that name, a link
/// included) unless `force`; with `force` a directory is still refused.
pub(crate) async fn check_target(target: &Path, force: bool) -> Result<(), Error> {
    match tokio::fs::symlink_metadata(target).await {
        Ok(m) if m.is_dir() => Err(Error::already_exists(format!(
            "'{}', a directory,",
            target.display()
        ))),
        Ok(_) if !force => Err(Error::already_exists(format!(
            "file '{}' (use --force to replace it)",
            target.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("'{}'", target.display()), e)),
    }
}

/// Puts the finished file `tmp` at `target`: with `force` by renaming
/// over whatever is there, otherwise by a hard link that fails if
/// `target` appeared meanwhile (then `tmp` is removed).
pub(crate) async fn publish(tmp: &Path, target: &Path, force: bool) -> Result<(), Error> {
    let object = format!("'{}'", target.display());
    if force {
        return tokio::fs::rename(tmp, target)
            .await
            .map_err(|e| Error::io(object, e));
    }
    match tokio::fs::hard_link(tmp, target).await {
        Ok(()) => {
            let _ = tokio::fs::remove_file(tmp).await;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::already_exists(
            format!("file '{}' (use --force to replace it)", target.display()),
        )),
        // A file system without hard links: check, then rename.
        Err(_) => {
            check_target(target, false).await?;
            tokio::fs::rename(tmp, target)
                .await
                .map_err(|e| Error::io(object, e))
        }
    }
}

/// Temporary files that are removed when this is dropped, unless kept.
#[derive(Debug, Default)]
pub(crate) struct TempFiles {
    paths: Vec<PathBuf>,
}

impl TempFiles {
    /// Removes `path` on drop.
    pub(crate) fn add(&mut self, path: PathBuf) {
        self.paths.push(path);
    }

    /// No longer removes `path` (it was published).
    pub(crate) fn forget(&mut self, path: &Path) {
        self.paths.retain(|p| p != path);
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.paths {
            // Also the `.part` a library writer may have left for it.
            let _ = std::fs::remove_file(p);
            let mut part = p.as_os_str().to_owned();
            part.push(".part");
            let _ = std::fs::remove_file(PathBuf::from(part));
        }
    }
}

/// A size for people: `512 B`, `30 MiB`, `1.5 GiB`.
pub(crate) fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut v = n as f64;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if n.is_multiple_of(1u64 << (10 * unit)) {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
