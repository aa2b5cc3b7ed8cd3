//! A tour of hypersdk on the embedded [`MemoryProvider`]: no hypervisor
//! needed.
//!
//! ```text
//! cargo run -p hypersdk-examples --example quickstart [-- OUT_DIR]
//! ```
//!
//! It discovers the demo VMs, snapshots `web01` twice around some guest
//! writes and lists the changed extents between the snapshots (what an
//! incremental backup would copy), exports the VM's disks at the second
//! snapshot to sparse raw images in `OUT_DIR` (default: a `hypersdk-quickstart`
//! directory in the system temp dir) while hashing them with SHA-256 and
//! SHA-1 at once, imports the images back as a new VM, and checks the copy
//! reads back identical.
//!
//! As providers land (vSphere, Oracle VM) the same steps run against them:
//! the code below only speaks the `Provider` trait once the provider is made.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use hypersdk_core::blocks::{BlockSource, CopyOptions, allocated_size, copy_to_file};
use hypersdk_core::digest::{Algorithm, Digests, MultiHasher};
use hypersdk_core::memory::MemoryProvider;
use hypersdk_core::model::{Extent, VmFilter, VmRef};
use hypersdk_core::progress::{CallbackSink, Phase, Progress};
use hypersdk_core::provider::{
    DiskData, DiskRef, DiskTransfer, ExportOptions, ImportOptions, ImportPackage, Provider,
};
use hypersdk_core::{Error, Result};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let out_dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hypersdk-quickstart"));
    if let Err(e) = run(&out_dir).await {
        eprintln!("quickstart failed: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

/// The whole tour, writing the exported images into `out_dir`.
async fn run(out_dir: &Path) -> Result<()> {
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(|e| Error::io(out_dir.display().to_string(), e))?;

    // 1. A provider. Tools hold it as `Arc<dyn Provider>`; the memory
    //    provider's own methods (write_disk) stand in for a running guest.
    let memory = Arc::new(MemoryProvider::with_demo_vms());
    let provider: Arc<dyn Provider> = memory.clone();
    println!(
        "provider '{}': {}",
        provider.name(),
        provider.capabilities()
    );

    // 2. Discovery.
    println!("\nVMs:");
    for vm in provider.discover(&VmFilter::all()).await? {
        let disks: u64 = vm.disks.iter().map(|d| d.capacity_bytes).sum();
        println!(
            "  {:<6} {:<4} {} vCPU {:>5} MiB  {:<4}{}  {:<8} {} disk(s), {} MiB  {} NIC(s)",
            vm.name,
            vm.id,
            vm.cpus,
            vm.memory_mib,
            vm.firmware,
            if vm.secure_boot == Some(true) {
                "+SB"
            } else {
                "   "
            },
            vm.guest_os.family,
            vm.disks.len(),
            disks >> 20,
            vm.nics.len(),
        );
    }

    // 3. Snapshots around guest writes, and what changed between them.
    let web = provider.vm(&VmRef::name("web01")).await?;
    let web_ref = VmRef::id(&web.id);
    let base = provider.create_snapshot(&web_ref, "base").await?;
    let data_disk = DiskRef::new(web_ref.clone(), "disk-1");
    memory.write_disk(&data_disk, 5 << 20, &[0x5a; 300 << 10])?;
    memory.write_disk(&data_disk, 12 << 20, b"a late write")?;
    memory.discard_disk(&data_disk, Extent::new(1 << 20, 512 << 10))?;
    let incr = provider.create_snapshot(&web_ref, "incr").await?;
    let delta = provider
        .changed_extents(&data_disk, Some(&base.id), &incr.id)
        .await?;
    println!(
        "\nweb01 disk-1 between snapshots '{}' and '{}': {} changed range(s), {} KiB to copy",
        base.name,
        incr.name,
        delta.changed.len(),
        delta.changed.total_bytes() >> 10
    );
    for e in delta.changed.iter() {
        println!("  changed {:>10} +{:>8}", e.offset, e.length);
    }
    if let Some(freed) = &delta.freed {
        for e in freed.iter() {
            println!("  freed   {:>10} +{:>8}", e.offset, e.length);
        }
    }

    // 4. Export the VM at snapshot 'incr' to sparse raw images, hashing as
    //    the bytes go by and reporting progress through a callback.
    let progress = Progress::new(CallbackSink::new(|ev| {
        if ev.phase == Phase::Transferring && ev.bytes_total.is_some() {
            println!(
                "    {:<18} {:>6.1}%  {:>8} MiB/s",
                ev.item.as_deref().unwrap_or("?"),
                ev.percent().unwrap_or(0.0),
                ev.bytes_per_sec
                    .map_or_else(|| "-".to_string(), |r| format!("{:.0}", r / 1048576.0)),
            );
        }
    }));
    let options = ExportOptions::default()
        .with_snapshot(incr.id.clone())
        .with_progress(progress.clone());
    let mut export = provider.export(&web_ref, &options).await?;
    println!(
        "\nexporting '{}' ({}) to {}",
        export.vm.name,
        export.method,
        out_dir.display()
    );
    let mut images = Vec::new();
    let started = Instant::now();
    for disk in export.take_disks() {
        let DiskData::Blocks(source) = &disk.data else {
            return Err(Error::unsupported("streamed disk export", "quickstart"));
        };
        let path = out_dir.join(&disk.file_name);
        // The copy engine reads only the allocated extents, writes a sparse
        // `.part` file renamed into place when complete, and hashes the
        // whole image as the bytes go by.
        let copy = CopyOptions::default()
            .with_item(disk.file_name.clone())
            .with_digests(&[Algorithm::Sha256, Algorithm::Sha1])
            .with_progress(progress.clone());
        let report = copy_to_file(source.as_ref(), &path, None, None, None, &copy).await?;
        let digests = report
            .digests
            .ok_or_else(|| Error::other("the copy computed no digest"))?;
        let sha256 = digest(&digests, Algorithm::Sha256)?;
        println!(
            "  {:<18} {:>4} MiB, {:>5} KiB fetched, {:>5} KiB on disk, {}",
            disk.file_name,
            source.len() >> 20,
            report.bytes_fetched >> 10,
            allocated_size(&path)? >> 10,
            sha256
        );
        images.push((disk, path, sha256));
    }
    export.complete().await?;
    println!("  done in {:.0?}", started.elapsed());

    // 5. Import the images back as a new VM, streaming them from disk.
    let mut package = ImportPackage::new(web.clone());
    for (disk, path, _) in &images {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        package = package.with_disk(DiskTransfer {
            info: disk.info.clone(),
            file_name: disk.file_name.clone(),
            format: disk.format,
            size: disk.size,
            data: DiskData::Stream(file_stream(file, path.clone())),
        });
    }
    let copy = provider
        .import(package, &ImportOptions::default().with_name("web01-copy"))
        .await?;
    println!("\nimported as '{}' ({})", copy.name, copy.id);

    // 6. The copy reads back identical to the exported snapshot.
    for (disk, _, expected) in &images {
        let source = provider
            .open_disk(&DiskRef::new(VmRef::id(&copy.id), &disk.info.id), None)
            .await?;
        let digests = hash_source(source.as_ref()).await?;
        let actual = digest(&digests, Algorithm::Sha256)?;
        expected.verify(&format!("{} of web01-copy", disk.info.id), &actual)?;
        println!("  {:<7} verified {}", disk.info.id, actual);
    }
    Ok(())
}

/// Hashes a whole block source, holes included.
async fn hash_source(source: &dyn BlockSource) -> Result<Digests> {
    let mut hasher = MultiHasher::new(&[Algorithm::Sha256]);
    let mut body = source.read_stream(Extent::new(0, source.len())).await?;
    while let Some(chunk) = body.next().await {
        hasher.update(chunk?);
    }
    hasher.finish()
}

/// The checksum of `algorithm` among `digests`.
fn digest(digests: &Digests, algorithm: Algorithm) -> Result<hypersdk_core::digest::Checksum> {
    digests
        .get(algorithm)
        .cloned()
        .ok_or_else(|| Error::other(format!("no {algorithm} digest was computed")))
}

/// A file read as a stream of 1 MiB chunks.
fn file_stream(file: tokio::fs::File, path: PathBuf) -> BoxStream<'static, Result<Bytes>> {
    futures::stream::try_unfold((file, path), |(mut file, path)| async move {
        let mut buf = vec![0; 1 << 20];
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Error::io(path.display().to_string(), e))?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), (file, path))))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    /// The demo runs to the end (the verification step inside it fails the
    /// run if the imported copy differs) and leaves only finished images.
    #[tokio::test]
    async fn quickstart_runs() {
        let dir = tempfile::tempdir().unwrap();
        super::run(dir.path()).await.unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["web01-disk0.raw", "web01-disk1.raw"]);
    }
}
