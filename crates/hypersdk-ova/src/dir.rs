//! A [`Provider`] over a local directory of OVA and OVF packages.
//!
//! Each `*.ova` file, and each `*.ovf` descriptor with its files beside it,
//! is a package; each virtual system in a package is a VM. Nothing runs and
//! nothing needs a server: the provider is the local end of a migration
//! (export a VM from vSphere into the directory, import from it into
//! another platform) and a realistic provider for tests and demos.
//!
//! | operation | what it does |
//! |---|---|
//! | `discover`, `vm` | parse every package's descriptor (an OVA is indexed: headers only) |
//! | `export` | the descriptor and each disk as a [`BlockSource`] over its bytes in the package |
//! | `import` | writes `<name>.ova`: a descriptor generated from the VM, the disks in order, a SHA-256 manifest; it appears only when complete |
//! | `open_disk` | the disk's bytes when its file is raw; other formats need the VMDK decoder and are `Unsupported` for now |
//! | snapshots, changed extents | `Unsupported`: a package is a still image |
//!
//! VM ids are the package file name (`web01.ova`), or `web01.ova#<system id>`
//! for each member of a `VirtualSystemCollection`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use hypersdk_core::memory::MemoryProvider;
//! use hypersdk_core::model::{VmFilter, VmRef};
//! use hypersdk_core::provider::{ExportOptions, ImportOptions, Provider};
//! use hypersdk_ova::dir::OvaDirProvider;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let packages = OvaDirProvider::new(dir.path());
//! let source = MemoryProvider::with_demo_vms();
//!
//! // Export web01 from one platform into the directory, as web01.ova.
//! let export = source.export(&VmRef::name("web01"), &ExportOptions::default()).await?;
//! let (package, lease) = export.into_package();
//! let vm = packages.import(package, &ImportOptions::default()).await?;
//! lease.complete().await?;
//! assert_eq!(vm.id, "web01.ova");
//! assert_eq!(packages.discover(&VmFilter::all()).await?.len(), 1);
//! # Ok::<(), hypersdk_core::Error>(())
//! # }).unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use hypersdk_core::blocks::{BlockSource, FileSource, check_range};
use hypersdk_core::digest::{Algorithm, hash_file};
use hypersdk_core::model::{
    DiskFormat, Extent, ExtentList, SnapshotInfo, SnapshotRef, VmFilter, VmInfo, VmRef,
};
use hypersdk_core::provider::{
    Capabilities, Capability, ChangedExtents, Descriptor, DescriptorFormat, DiskData, DiskRef,
    DiskTransfer, Export, ExportOptions, ImportOptions, ImportPackage, Provider, unsupported,
};
use hypersdk_core::{Error, Result};

use crate::archive::{ManifestMode, OvaIndex, OvaWriter, ReadOptions, WriteOptions};
use crate::mf::Manifest;
use crate::ovf::{Envelope, OvfDisk, write_descriptor};

/// The provider name used in messages.
const NAME: &str = "ova-dir";

/// A [`Provider`] over a directory of OVA and OVF packages; see the
/// [module documentation](self).
#[derive(Debug, Clone)]
pub struct OvaDirProvider {
    dir: PathBuf,
    options: ReadOptions,
}

/// Where a package's files are.
#[derive(Debug, Clone)]
enum Files {
    Ova(Box<OvaIndex>),
    /// An `.ovf` whose files are beside it in this directory.
    Ovf(PathBuf),
}

/// One parsed package.
#[derive(Debug, Clone)]
struct Package {
    file_name: String,
    descriptor: Bytes,
    envelope: Envelope,
    files: Files,
}

impl OvaDirProvider {
    /// A provider over the packages in `dir`. The directory is read on each
    /// call, so packages added or removed meanwhile are seen.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        OvaDirProvider {
            dir: dir.into(),
            options: ReadOptions::default(),
        }
    }

    /// Sets the limits used to read packages.
    pub fn with_read_options(mut self, options: ReadOptions) -> Self {
        self.options = options;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The package file names, sorted.
    async fn package_names(&self) -> Result<Vec<String>> {
        let object = || format!("directory '{}'", self.dir.display());
        let mut rd = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(|e| Error::io(object(), e))?;
        let mut names = Vec::new();
        while let Some(entry) = rd.next_entry().await.map_err(|e| Error::io(object(), e))? {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let lower = name.to_ascii_lowercase();
            let is_file = entry.file_type().await.is_ok_and(|t| t.is_file());
            if is_file && (lower.ends_with(".ova") || lower.ends_with(".ovf")) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    async fn load(&self, file_name: &str) -> Result<Package> {
        let path = self.dir.join(file_name);
        if file_name.to_ascii_lowercase().ends_with(".ova") {
            let index = OvaIndex::open_with(&path, &self.options).await?;
            Ok(Package {
                file_name: file_name.to_string(),
                descriptor: index.descriptor().clone(),
                envelope: index.envelope().clone(),
                files: Files::Ova(Box::new(index)),
            })
        } else {
            let object = || format!("descriptor '{}'", path.display());
            let len = tokio::fs::metadata(&path)
                .await
                .map_err(|e| Error::io(object(), e))?
                .len();
            if len > self.options.xml.max_bytes as u64 {
                return Err(Error::invalid_data(
                    object(),
                    format!(
                        "{len} bytes, larger than the {}-byte limit for a descriptor",
                        self.options.xml.max_bytes
                    ),
                ));
            }
            let bytes = tokio::fs::read(&path)
                .await
                .map_err(|e| Error::io(object(), e))?;
            let envelope = Envelope::parse_with(&bytes, &self.options.xml)?;
            Ok(Package {
                file_name: file_name.to_string(),
                descriptor: Bytes::from(bytes),
                envelope,
                files: Files::Ovf(path),
            })
        }
    }

    /// The VMs of one package, with their ids.
    fn vms_of(package: &Package) -> Result<Vec<(VmInfo, String)>> {
        let systems = package.envelope.virtual_systems();
        let mut out = Vec::with_capacity(systems.len());
        for vs in &systems {
            let mut vm = vs.to_vm_info(&package.envelope)?;
            vm.id = if systems.len() == 1 {
                package.file_name.clone()
            } else {
                format!("{}#{}", package.file_name, vs.id)
            };
            out.push((vm, vs.id.clone()));
        }
        Ok(out)
    }

    /// Every VM, with its package; packages that fail to parse are logged
    /// and skipped, so one bad file does not hide the others.
    async fn all(&self) -> Result<Vec<(VmInfo, Arc<Package>)>> {
        let mut out = Vec::new();
        for name in self.package_names().await? {
            match self.load(&name).await.and_then(|p| {
                let vms = Self::vms_of(&p)?;
                Ok((p, vms))
            }) {
                Ok((package, vms)) => {
                    let package = Arc::new(package);
                    out.extend(vms.into_iter().map(|(vm, _)| (vm, Arc::clone(&package))));
                }
                Err(e) => {
                    tracing::warn!(package = %name, error = %e, "skipping a package that does not read")
                }
            }
        }
        Ok(out)
    }

    /// Finds one VM. A reference by id loads only that package, so its
    /// error (a corrupt archive) is reported rather than "not found".
    async fn find(&self, r: &VmRef) -> Result<(VmInfo, Arc<Package>)> {
        if let VmRef::Id(id) = r {
            // `pkg.ova` or `pkg.ova#system`; a file name may hold '#' too.
            let names = self.package_names().await?;
            let file = if names.iter().any(|n| n == id) {
                id.as_str()
            } else {
                match id.rsplit_once('#') {
                    Some((file, _)) if names.iter().any(|n| n == file) => file,
                    _ => return Err(Error::not_found(r.to_string())),
                }
            };
            let package = Arc::new(self.load(file).await?);
            return Self::vms_of(&package)?
                .into_iter()
                .find(|(vm, _)| vm.id == *id)
                .map(|(vm, _)| (vm, package))
                .ok_or_else(|| Error::not_found(r.to_string()));
        }
        let mut found: Vec<_> = self
            .all()
            .await?
            .into_iter()
            .filter(|(vm, _)| r.matches(vm))
            .collect();
        match found.len() {
            0 => Err(Error::not_found(r.to_string())),
            1 => Ok(found.remove(0)),
            n => Err(Error::Conflict {
                object: r.to_string(),
                message: format!("{n} packages hold a VM matching it; refer to it by id"),
            }),
        }
    }

    /// Checks the package's digests: an OVA against its manifest (every
    /// listed file hashed, in parallel), an OVF package against the
    /// `<stem>.mf` beside it when there is one. A package without a
    /// manifest has nothing to check against.
    async fn verify(&self, package: &Package) -> Result<()> {
        match &package.files {
            Files::Ova(index) => {
                if index.manifest().is_some() {
                    index.verify().await?;
                }
                Ok(())
            }
            Files::Ovf(path) => {
                let mf_path = path.with_extension("mf");
                let text = match tokio::fs::read(&mf_path).await {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => {
                        return Err(Error::io(format!("manifest '{}'", mf_path.display()), e));
                    }
                };
                let mf_name = mf_path.display().to_string();
                let mf = Manifest::parse_named(&mf_name, &text)?;
                let dir = path.parent().unwrap_or(Path::new("."));
                for listed in mf.names() {
                    let file = dir.join(crate::archive::validate_entry_name(listed)?);
                    let algorithms: Vec<Algorithm> =
                        mf.checksums_of(listed).map(|c| c.algorithm()).collect();
                    let digests = hash_file(&file, &algorithms).await?;
                    mf.verify(listed, &digests)?;
                }
                Ok(())
            }
        }
    }

    /// The bytes of the file `href` of `package`.
    async fn file_source(&self, package: &Package, href: &str) -> Result<Arc<dyn BlockSource>> {
        match &package.files {
            Files::Ova(index) => Ok(Arc::new(index.open_entry(href)?)),
            Files::Ovf(path) => {
                let name = crate::archive::validate_entry_name(href)?;
                let dir = path.parent().unwrap_or(Path::new("."));
                Ok(Arc::new(FileSource::open(dir.join(name)).await?))
            }
        }
    }
}

#[async_trait]
impl Provider for OvaDirProvider {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with(Capability::Discover)
            .with(Capability::Export)
            .with(Capability::Import)
    }

    async fn discover(&self, filter: &VmFilter) -> Result<Vec<VmInfo>> {
        Ok(self
            .all()
            .await?
            .into_iter()
            .map(|(vm, _)| vm)
            .filter(|vm| filter.matches(vm))
            .collect())
    }

    async fn vm(&self, vm: &VmRef) -> Result<VmInfo> {
        Ok(self.find(vm).await?.0)
    }

    async fn create_snapshot(&self, _vm: &VmRef, _name: &str) -> Result<SnapshotInfo> {
        Err(unsupported(self, "create_snapshot"))
    }

    async fn list_snapshots(&self, _vm: &VmRef) -> Result<Vec<SnapshotInfo>> {
        Err(unsupported(self, "list_snapshots"))
    }

    async fn delete_snapshot(&self, _snapshot: &SnapshotRef) -> Result<()> {
        Err(unsupported(self, "delete_snapshot"))
    }

    /// The descriptor as it is in the package, and each disk's file as a
    /// [`DiskData::Blocks`] source over its bytes (a blank disk, which has
    /// no file, as zeros of its capacity). Method `ova-directory` or
    /// `ovf-directory`.
    async fn export(&self, vm: &VmRef, options: &ExportOptions) -> Result<Export> {
        if options.snapshot.is_some() {
            return Err(unsupported(self, "export from a snapshot"));
        }
        let (info, package) = self.find(vm).await?;
        if let Some(wanted) = &options.disks
            && let Some(unknown) = wanted
                .iter()
                .find(|w| !info.disks.iter().any(|d| d.id == **w))
        {
            return Err(Error::not_found(format!("disk '{unknown}' of {vm}")));
        }
        // The package is untrusted: its digests are checked before any
        // byte of it is handed on.
        self.verify(&package).await?;
        let method = match package.files {
            Files::Ova(_) => "ova-directory",
            Files::Ovf(_) => "ovf-directory",
        };
        let descriptor_name = match &package.files {
            Files::Ova(index) => index
                .entries()
                .first()
                .map_or_else(|| package.file_name.clone(), |e| e.name.clone()),
            Files::Ovf(_) => package.file_name.clone(),
        };
        let mut export = Export::new(info.clone(), method).with_descriptor(Descriptor {
            format: DescriptorFormat::Ovf,
            file_name: descriptor_name,
            bytes: package.descriptor.clone(),
        });
        for disk in &info.disks {
            if let Some(wanted) = &options.disks
                && !wanted.contains(&disk.id)
            {
                continue;
            }
            let transfer = match &disk.backing {
                Some(href) => {
                    if let Some(f) = package
                        .envelope
                        .references()
                        .iter()
                        .find(|f| f.href == *href)
                        && (f.compression.is_some() || f.chunk_size.is_some())
                    {
                        return Err(unsupported(
                            self,
                            &format!("export of the compressed or chunked file '{href}'"),
                        ));
                    }
                    let source = self.file_source(&package, href).await?;
                    let file_name = href.rsplit('/').next().unwrap_or(href).to_string();
                    DiskTransfer {
                        info: disk.clone(),
                        file_name,
                        format: disk.format,
                        size: Some(source.len()),
                        data: DiskData::Blocks(source),
                    }
                }
                None => DiskTransfer {
                    info: disk.clone(),
                    file_name: format!("{}-blank.raw", sanitize(&disk.id)),
                    format: DiskFormat::Raw,
                    size: Some(disk.capacity_bytes),
                    data: DiskData::Blocks(Arc::new(Zeros {
                        len: disk.capacity_bytes,
                    })),
                },
            };
            export = export.with_disk(transfer);
        }
        Ok(export)
    }

    /// Writes `<name>.ova` (name from the options, else the package's VM;
    /// characters unsafe in file names replaced by `_`). The descriptor is
    /// generated from the VM and its disks; the disks are written in order
    /// with a SHA-256 manifest at the end. The file appears only when
    /// complete: a failed disk stream leaves nothing. An existing package
    /// of that name is [`Error::AlreadyExists`].
    async fn import(&self, package: ImportPackage, options: &ImportOptions) -> Result<VmInfo> {
        if options.power_on {
            return Err(unsupported(self, "power on after import"));
        }
        if options.location.is_some() {
            return Err(Error::invalid_input(
                "the directory provider has no locations: leave ImportOptions::location unset",
            ));
        }
        let mut vm = package.vm;
        if let Some(name) = &options.name {
            vm.name = name.clone();
        }
        if vm.name.trim().is_empty() {
            return Err(Error::invalid_input("an imported VM needs a name"));
        }
        let stem = sanitize(&vm.name);
        let file_name = format!("{stem}.ova");
        let path = self.dir.join(&file_name);
        vm.disks = package.disks.iter().map(|d| d.info.clone()).collect();
        let mut ovf_disks = Vec::with_capacity(package.disks.len());
        let mut hrefs: Vec<String> = Vec::new();
        for d in &package.disks {
            let href = sanitize(&d.file_name);
            if hrefs.contains(&href) {
                return Err(Error::invalid_input(format!(
                    "two disks of the package travel as '{href}'"
                )));
            }
            let mut disk = OvfDisk::new(href.clone()).with_format(d.format);
            if let Some(size) = d.size {
                disk = disk.with_size(size);
            }
            hrefs.push(href);
            ovf_disks.push(disk);
        }
        let descriptor = write_descriptor(&vm, &ovf_disks)?;
        let options =
            WriteOptions::default().with_manifest(ManifestMode::AtEnd(vec![Algorithm::Sha256]));
        let mut writer = OvaWriter::create(&path, options).await?;
        writer
            .write_descriptor(&format!("{stem}.ovf"), descriptor.as_bytes())
            .await?;
        for (transfer, href) in package.disks.into_iter().zip(&hrefs) {
            match transfer.data {
                DiskData::Stream(stream) => {
                    writer.append_stream(href, transfer.size, stream).await?;
                }
                DiskData::Blocks(source) => {
                    let len = source.len();
                    let stream = source.read_stream(Extent::new(0, len)).await?;
                    writer.append_stream(href, Some(len), stream).await?;
                }
            }
        }
        writer.finish().await?;
        match self.vm(&VmRef::id(file_name)).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                // What we wrote does not read back: leave nothing behind.
                let _ = tokio::fs::remove_file(&path).await;
                Err(e)
            }
        }
    }

    async fn open_disk(
        &self,
        _disk: &DiskRef,
        _snapshot: Option<&str>,
    ) -> Result<Arc<dyn BlockSource>> {
        Err(unsupported(self, "open_disk"))
    }

    async fn changed_extents(
        &self,
        _disk: &DiskRef,
        _from: Option<&str>,
        _to: &str,
    ) -> Result<ChangedExtents> {
        Err(unsupported(self, "changed_extents"))
    }
}

/// A file name from arbitrary text: path separators, control characters,
/// characters Windows forbids and `#` (which separates a package from a
/// system in VM ids) become `_`; a leading dot is dropped.
fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_control()
                || matches!(
                    c,
                    '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' | '#'
                )
            {
                '_'
            } else {
                c
            }
        })
        .collect();
    let s = s.trim_start_matches('.').trim().to_string();
    if s.is_empty() { "_".to_string() } else { s }
}

/// The largest [`BlockSource::read_range`] of a blank disk (256 MiB).
const MAX_ZERO_READ: u64 = 256 << 20;

/// A blank disk: zeros, nothing allocated.
#[derive(Debug)]
struct Zeros {
    len: u64,
}

#[async_trait]
impl BlockSource for Zeros {
    fn describe(&self) -> String {
        "blank disk".to_string()
    }

    fn len(&self) -> u64 {
        self.len
    }

    async fn read_range(&self, range: Extent) -> Result<Bytes> {
        check_range(self, range)?;
        // The capacity comes from an untrusted descriptor: a whole blank
        // disk is read with read_stream, not allocated at once.
        if range.length > MAX_ZERO_READ {
            return Err(Error::invalid_input(format!(
                "range {range} of a blank disk is larger than {MAX_ZERO_READ} bytes; \
                 read it with read_stream"
            )));
        }
        let len = usize::try_from(range.length).map_err(|_| {
            Error::invalid_input(format!("range {range} is too large to read at once"))
        })?;
        Ok(Bytes::from(vec![0u8; len]))
    }

    async fn read_stream(
        &self,
        range: Extent,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        check_range(self, range)?;
        const CHUNK: u64 = 1 << 20;
        let zeros = Bytes::from(vec![0u8; CHUNK as usize]);
        let n = range.length.div_ceil(CHUNK);
        let last = range.length - (n.saturating_sub(1)) * CHUNK;
        Ok(futures::stream::iter(0..n)
            .map(move |i| {
                Ok(if i + 1 == n {
                    zeros.slice(..last as usize)
                } else {
                    zeros.clone()
                })
            })
            .boxed())
    }

    async fn allocated_extents(&self) -> Result<Option<ExtentList>> {
        Ok(Some(ExtentList::new()))
    }
}
