//! `ovm-backup demo`: a full and an incremental backup against hypersdk's
//! OVM exporter test server, started in-process.

use std::io::Write;
use std::path::Path;

use hypersdk_core::digest::{Algorithm, hash_file};
use hypersdk_core::progress::Progress;
use hypersdk_core::{Error, Result};
use hypersdk_examples::bar::BarSink;
use hypersdk_ovm::backup::{BackupOptions, OvmBackup};
use hypersdk_ovm::client::OvmClient;
use hypersdk_testkit::ovm::{DiskSpec, OvmExporter, VmSpec};

use super::{print_json, print_report, writeln_out};

const MIB: u64 = 1 << 20;

/// A deterministic pseudo-random byte stream.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 17
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub(crate) async fn run(
    dir: &Path,
    size_mib: u64,
    parallel: usize,
    json: bool,
    out: &mut dyn Write,
    progress: &Progress,
    bars: &BarSink,
) -> Result<()> {
    let size = size_mib.max(4) * MIB;
    let disks = [
        ("0004fb0000120000763ac50c4e345d0a.img", "xvda"),
        ("0004fb0000120000a1f0a6d3f0e8e843.img", "xvdb"),
    ];
    let mut vm = VmSpec::new("demo-web01");
    for (name, device) in disks {
        vm = vm.with_disk(DiskSpec::new(name, device, size));
    }
    let vm_id = vm.id.clone();
    let exporter = OvmExporter::builder()
        .vm(vm)
        .start()
        .await
        .map_err(|e| Error::io("the OVM exporter test server", e))?;
    bars.println(&format!(
        "demo: test exporter on {} with VM {vm_id} (demo-web01), two disks of {} MiB",
        exporter.endpoint(),
        size / MIB
    ));

    // The guest writes a quarter of each disk in scattered runs.
    let mut rng = Lcg(0x5eed);
    for (name, _) in disks {
        let mut written = 0;
        while written < size / 4 {
            let len = (64 << 10) * (1 + rng.next() % 32);
            let offset = (rng.next() % (size / (64 << 10))) * (64 << 10);
            let len = len.min(size - offset);
            exporter
                .write(&vm_id, name, offset, &rng.bytes(len as usize))
                .map_err(|e| Error::io(format!("demo disk {name}"), e))?;
            written += len;
        }
    }

    let client = OvmClient::builder(&exporter.endpoint())
        .credentials(exporter.username(), exporter.password())
        .ca_pem(exporter.ca_pem())
        .build()?;
    let backup = OvmBackup::new(client, dir).with_options(
        BackupOptions::default()
            .with_parallelism(parallel.max(1))
            .with_progress(progress.clone()),
    );
    let full = backup.full(&vm_id).await?;
    check_images(&exporter, &backup, &vm_id, &full.snapshot_id).await?;

    // The guest writes here and there and trims a range.
    for (name, _) in disks {
        for _ in 0..16 {
            let offset = rng.next() % (size - MIB);
            let len = 4096 + (rng.next() % 60_000) as usize;
            exporter
                .write(&vm_id, name, offset, &rng.bytes(len))
                .map_err(|e| Error::io(format!("demo disk {name}"), e))?;
        }
        exporter
            .trim(&vm_id, name, size / 2, (4 * MIB).min(size / 8))
            .map_err(|e| Error::io(format!("demo disk {name}"), e))?;
    }
    let incremental = backup.incremental(&vm_id, &full.snapshot_id).await?;
    check_images(&exporter, &backup, &vm_id, &incremental.snapshot_id).await?;

    if json {
        return print_json(
            out,
            &serde_json::json!({ "full": full, "incremental": incremental }),
        );
    }
    print_report(out, &full)?;
    print_report(out, &incremental)?;
    writeln_out(
        out,
        "demo: after each backup every image's SHA-256 equals the exporter's snapshot file",
    )
}

/// Checks every image against the server's snapshot file.
async fn check_images(
    exporter: &OvmExporter,
    backup: &OvmBackup,
    vm_id: &str,
    snapshot: &str,
) -> Result<()> {
    let state = backup
        .state()
        .await?
        .ok_or_else(|| Error::other("the backup wrote no state"))?;
    for disk in &state.disks {
        let server = exporter
            .snapshot_disk_path(vm_id, snapshot, &disk.name)
            .ok_or_else(|| Error::not_found(format!("snapshot file of {}", disk.name)))?;
        let expected = hash_file(&server, &[Algorithm::Sha256]).await?;
        expected.verify(&format!("image {}", disk.name), &disk.sha256)?;
        let actual = hash_file(backup.image_path(&disk.name), &[Algorithm::Sha256]).await?;
        actual.verify(&format!("image {}", disk.name), &disk.sha256)?;
    }
    Ok(())
}
