//! `.mf` manifests: the digests of an OVF package's files.
//!
//! A manifest is a text file with one line per file and algorithm. Three
//! spellings occur in real packages, and [`Manifest::parse`] reads all of
//! them:
//!
//! | writer | line |
//! |---|---|
//! | ovftool, openssl, govc | `SHA256(disk1.vmdk)= 9f86…` |
//! | VirtualBox, BSD `--tag` | `SHA1 (disk1.vmdk) = 9f86…` |
//! | hand-written scripts | `SHA1(disk1.vmdk) = 9f86…` |
//!
//! The parser follows VirtualBox's reader, the most tolerant real one: blanks
//! around the parentheses and `=` are optional, CRLF line ends and empty lines
//! are accepted, a `\` in a name is read as `/`, and names may contain
//! spaces and parentheses (`Ubuntu (64-bit)-disk001.vmdk`). SHA-1, SHA-256 and SHA-512 are read;
//! any other attribute (MD5, SIZE) is an error naming the line, because a
//! digest that cannot be checked must not pass as checked.
//!
//! [`Manifest`]'s `to_string` ([`Display`](std::fmt::Display)) writes
//! ovftool's spelling, which every reader accepts.
//!
//! ```
//! use hypersdk_core::digest::{Algorithm, Checksum};
//! use hypersdk_ova::mf::Manifest;
//!
//! let text = "SHA1 (vm.ovf) = da39a3ee5e6b4b0d3255bfef95601890afd80709\n";
//! let mf = Manifest::parse(text.as_bytes())?;
//! let expected = mf.get("vm.ovf", Algorithm::Sha1).unwrap();
//! assert_eq!(*expected, Checksum::compute(Algorithm::Sha1, b""));
//!
//! // Written back in ovftool's spelling.
//! assert_eq!(mf.to_string(), "SHA1(vm.ovf)= da39a3ee5e6b4b0d3255bfef95601890afd80709\n");
//! # Ok::<(), hypersdk_core::Error>(())
//! ```

use std::fmt;

use hypersdk_core::digest::{Algorithm, Checksum, Digests};
use hypersdk_core::{Error, Result};

/// The largest manifest [`Manifest::parse`] accepts (1 MiB). A real one has
/// a line per file: a few hundred bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// One line of a manifest: the expected digest of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The file name as the package names it (a `\` read as `/`).
    pub name: String,
    /// The expected digest.
    pub checksum: Checksum,
}

/// A parsed `.mf` manifest: expected digests by file name, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// An empty manifest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses a manifest in any of the spellings in the
    /// [module documentation](self).
    ///
    /// Errors are [`Error::InvalidData`] naming the line: a line that is not
    /// `ALG(name)= hex`, an unknown algorithm, a digest of the wrong length
    /// or with non-hex digits, a name with control characters, and the same
    /// file listed twice for one algorithm.
    pub fn parse(text: &[u8]) -> Result<Self> {
        Self::parse_named("manifest", text)
    }

    /// [`parse`](Self::parse), naming the manifest `object` (its file name)
    /// in errors.
    pub fn parse_named(object: &str, text: &[u8]) -> Result<Self> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(Error::invalid_data(
                object,
                format!(
                    "manifest is {} bytes, larger than the {MAX_MANIFEST_BYTES}-byte limit",
                    text.len()
                ),
            ));
        }
        let text = std::str::from_utf8(text)
            .map_err(|e| Error::invalid_data(object, format!("manifest is not UTF-8 text: {e}")))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut mf = Manifest::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let entry = parse_line(line)
                .map_err(|msg| Error::invalid_data(object, format!("line {}: {msg}", i + 1)))?;
            if mf.get(&entry.name, entry.checksum.algorithm()).is_some() {
                return Err(Error::invalid_data(
                    object,
                    format!(
                        "line {}: {} of '{}' is listed twice",
                        i + 1,
                        algorithm_tag(entry.checksum.algorithm()),
                        entry.name
                    ),
                ));
            }
            mf.entries.push(entry);
        }
        Ok(mf)
    }

    /// Adds (or replaces) the expected digest of `name`.
    ///
    /// Fails with [`Error::InvalidInput`] when `name` cannot be written in a
    /// manifest (empty, control characters, or a `)` followed by `=`).
    pub fn insert(&mut self, name: impl Into<String>, checksum: Checksum) -> Result<()> {
        let name = name.into();
        check_entry_name(&name)
            .map_err(|m| Error::invalid_input(format!("manifest entry: {m}")))?;
        match self
            .entries
            .iter_mut()
            .find(|e| e.name == name && e.checksum.algorithm() == checksum.algorithm())
        {
            Some(e) => e.checksum = checksum,
            None => self.entries.push(ManifestEntry { name, checksum }),
        }
        Ok(())
    }

    /// The entries in file order.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// Whether the manifest lists nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The expected digest of `name` for `algorithm`.
    pub fn get(&self, name: &str, algorithm: Algorithm) -> Option<&Checksum> {
        self.entries
            .iter()
            .find(|e| e.name == name && e.checksum.algorithm() == algorithm)
            .map(|e| &e.checksum)
    }

    /// Every expected digest of `name` (one per algorithm listed).
    pub fn checksums_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Checksum> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.name == name)
            .map(|e| &e.checksum)
    }

    /// Whether the manifest lists `name` at all.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|e| e.name == name)
    }

    /// The distinct file names, in file order.
    pub fn names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.entries {
            if !out.contains(&e.name.as_str()) {
                out.push(&e.name);
            }
        }
        out
    }

    /// The algorithms the manifest uses, each once.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        let mut out = Vec::new();
        for e in &self.entries {
            if !out.contains(&e.checksum.algorithm()) {
                out.push(e.checksum.algorithm());
            }
        }
        out
    }

    /// Checks the digests computed for `name` against every digest the
    /// manifest lists for it.
    ///
    /// Returns [`Error::Integrity`] naming the file with the expected and
    /// actual digest on a mismatch, and [`Error::InvalidInput`] when the
    /// manifest lists an algorithm `actual` lacks (it was not computed).
    /// A file the manifest does not list passes: whether unlisted files are
    /// allowed is the caller's rule.
    pub fn verify(&self, name: &str, actual: &Digests) -> Result<()> {
        for expected in self.checksums_of(name) {
            match actual.get(expected.algorithm()) {
                Some(got) => expected.verify(name, got)?,
                None => {
                    return Err(Error::invalid_input(format!(
                        "cannot check '{name}': the manifest lists {} but it was not computed",
                        algorithm_tag(expected.algorithm())
                    )));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Manifest {
    /// Writes ovftool's spelling: `SHA256(name)= hex`, one line per entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(
                f,
                "{}({})= {}",
                algorithm_tag(e.checksum.algorithm()),
                e.name,
                e.checksum.to_hex()
            )?;
        }
        Ok(())
    }
}

/// The tag a manifest writes for `algorithm`: `SHA1`, `SHA256`, `SHA512`.
pub fn algorithm_tag(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Sha1 => "SHA1",
        Algorithm::Sha256 => "SHA256",
        Algorithm::Sha512 => "SHA512",
        // Algorithm is non_exhaustive; a new one gets its name upper-cased
        // by whoever adds it here.
        #[allow(unreachable_patterns)]
        _ => "UNKNOWN",
    }
}

fn parse_tag(tag: &str) -> std::result::Result<Algorithm, String> {
    match tag.to_ascii_uppercase().as_str() {
        "SHA1" => Ok(Algorithm::Sha1),
        "SHA256" => Ok(Algorithm::Sha256),
        "SHA512" => Ok(Algorithm::Sha512),
        "MD5" | "SIZE" | "SHA224" | "SHA384" => Err(format!(
            "{tag} entries are not supported (only SHA1, SHA256 and SHA512 can be checked)"
        )),
        _ => Err(format!("unknown digest algorithm '{tag}'")),
    }
}

/// Parses one trimmed, non-empty line.
fn parse_line(line: &str) -> std::result::Result<ManifestEntry, String> {
    let expected = "expected 'ALGORITHM(name)= hex'";
    // The attribute ends at a blank or '('.
    let tag_end = line
        .find(|c: char| c == '(' || c.is_whitespace())
        .ok_or_else(|| format!("no '(' in '{}': {expected}", shorten(line)))?;
    let tag = &line[..tag_end];
    if tag.is_empty() {
        return Err(format!("no algorithm before '(': {expected}"));
    }
    let rest = line[tag_end..].trim_start();
    let rest = rest
        .strip_prefix('(')
        .ok_or_else(|| format!("no '(' after '{tag}': {expected}"))?;
    // The name runs to the ')' that is followed (after blanks) by '='.
    let mut split = None;
    for (i, _) in rest.match_indices(')') {
        if rest[i + 1..].trim_start().starts_with('=') {
            split = Some(i);
            break;
        }
    }
    let close = split.ok_or_else(|| format!("no ')' followed by '=': {expected}"))?;
    let name = rest[..close].replace('\\', "/");
    let after = rest[close + 1..].trim_start();
    let value = after.strip_prefix('=').unwrap_or(after).trim();
    let algorithm = parse_tag(tag)?;
    check_entry_name(&name)?;
    if value.is_empty() {
        return Err(format!("no digest after '=' for '{name}'"));
    }
    let checksum = Checksum::from_hex(algorithm, value).map_err(|_| {
        format!(
            "{} digest of '{name}' must be {} hex digits, found '{}'",
            algorithm_tag(algorithm),
            algorithm.hex_len(),
            shorten(value)
        )
    })?;
    Ok(ManifestEntry { name, checksum })
}

/// Whether `name` can be written on a manifest line and read back: not
/// empty, no control characters, and no `)` followed by `=` (where the
/// name would end). Parentheses and colons are fine: VirtualBox names disks
/// `Ubuntu (64-bit)-disk001.vmdk`.
pub(crate) fn check_entry_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty file name".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "file name '{}' contains {c:?}, which a manifest cannot carry",
            name.escape_debug()
        ));
    }
    for (i, _) in name.match_indices(')') {
        if name[i + 1..].trim_start().starts_with('=') {
            return Err(format!(
                "file name '{}' contains ')' followed by '=', which ends a name in a manifest",
                name.escape_debug()
            ));
        }
    }
    Ok(())
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.escape_debug().to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{}…", head.escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_EMPTY: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
    const SHA256_EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn the_three_real_spellings() {
        for line in [
            format!("SHA256(a b.vmdk)= {SHA256_EMPTY}"),
            format!("SHA256 (a b.vmdk) = {SHA256_EMPTY}"),
            format!("SHA256(a b.vmdk) = {SHA256_EMPTY}"),
            format!("  sha256  (a b.vmdk)={SHA256_EMPTY}  \r"),
        ] {
            let mf = Manifest::parse(line.as_bytes()).unwrap();
            assert_eq!(mf.entries().len(), 1, "{line}");
            assert_eq!(mf.entries()[0].name, "a b.vmdk");
            assert_eq!(
                mf.get("a b.vmdk", Algorithm::Sha256).unwrap().to_hex(),
                SHA256_EMPTY
            );
        }
    }

    #[test]
    fn sha512_and_backslashes() {
        let hex = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
        let mf = Manifest::parse(format!("SHA512(dir\\x.vmdk)= {hex}\n").as_bytes()).unwrap();
        assert!(mf.get("dir/x.vmdk", Algorithm::Sha512).is_some());
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, &str)] = &[
            (
                "SHA1(x.vmdk)= abc",
                "line 2: SHA1 digest of 'x.vmdk' must be 40 hex",
            ),
            ("MD5(x.vmdk)= abc", "line 2: MD5 entries are not supported"),
            ("FOO(x.vmdk)= abc", "line 2: unknown digest algorithm 'FOO'"),
            ("SHA1 x.vmdk abc", "line 2: no '(' after 'SHA1'"),
            ("SHA1(x.vmdk abc", "line 2: no ')' followed by '='"),
            ("SHA1(a\u{7}b)= abc", "contains '\\u{7}'"),
            ("SHA1()= abc", "empty file name"),
            ("SHA1(x.vmdk)=", "no digest after '='"),
        ];
        for (bad, want) in cases {
            let text = format!("SHA1(ok)= {SHA1_EMPTY}\n{bad}\n");
            let err = Manifest::parse_named("pkg.mf", text.as_bytes()).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("pkg.mf"), "{msg}");
            assert!(msg.contains(want), "{bad}: {msg}");
        }
    }

    #[test]
    fn duplicates_are_errors_but_two_algorithms_are_fine() {
        let dup = format!("SHA1(x)= {SHA1_EMPTY}\nSHA1 (x) = {SHA1_EMPTY}\n");
        let msg = Manifest::parse(dup.as_bytes()).unwrap_err().to_string();
        assert!(msg.contains("line 2: SHA1 of 'x' is listed twice"), "{msg}");
        let two = format!("SHA1(x)= {SHA1_EMPTY}\nSHA256(x)= {SHA256_EMPTY}\n");
        let mf = Manifest::parse(two.as_bytes()).unwrap();
        assert_eq!(mf.checksums_of("x").count(), 2);
        assert_eq!(mf.names(), vec!["x"]);
        assert_eq!(mf.algorithms(), vec![Algorithm::Sha1, Algorithm::Sha256]);
    }

    #[test]
    fn write_then_parse() {
        let mut mf = Manifest::new();
        mf.insert("vm.ovf", Checksum::compute(Algorithm::Sha256, b"ovf"))
            .unwrap();
        mf.insert("disk 1.vmdk", Checksum::compute(Algorithm::Sha256, b"d"))
            .unwrap();
        let text = mf.to_string();
        assert!(text.starts_with("SHA256(vm.ovf)= "), "{text}");
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), mf);
        assert!(
            mf.insert("bad)= name", Checksum::compute(Algorithm::Sha1, b""))
                .is_err()
        );
        mf.insert(
            "Ubuntu (64-bit)-disk001.vmdk",
            Checksum::compute(Algorithm::Sha256, b"u"),
        )
        .unwrap();
        let back = Manifest::parse(mf.to_string().as_bytes()).unwrap();
        assert!(back.contains("Ubuntu (64-bit)-disk001.vmdk"));
        // The VirtualBox spelling of such a name.
        let vbox = format!("SHA1 (Ubuntu (64-bit).ovf) = {SHA1_EMPTY}\n");
        assert!(
            Manifest::parse(vbox.as_bytes())
                .unwrap()
                .contains("Ubuntu (64-bit).ovf")
        );
    }

    #[test]
    fn verify_names_file_and_digests() {
        let mf = Manifest::parse(format!("SHA1(x)= {SHA1_EMPTY}\n").as_bytes()).unwrap();
        let mut h = hypersdk_core::digest::MultiHasher::new(&[Algorithm::Sha1]);
        h.update_slice(b"not empty");
        let actual = h.finish().unwrap();
        let err = mf.verify("x", &actual).unwrap_err();
        assert_eq!(err.kind(), hypersdk_core::ErrorKind::Integrity);
        let msg = err.to_string();
        assert!(msg.contains('x') && msg.contains(SHA1_EMPTY), "{msg}");
        // An algorithm that was not computed is not a silent pass.
        let h = hypersdk_core::digest::MultiHasher::new(&[Algorithm::Sha256]);
        let err = mf.verify("x", &h.finish().unwrap()).unwrap_err();
        assert!(err.to_string().contains("was not computed"), "{err}");
    }
}
