//! hypersdk-vsphere against govmomi's vcsim (the testkit harness): login,
//! TLS policy and pinning, session expiry, paging, discovery checked
//! against vcsim's own registry, snapshots, tasks, faults and the provider
//! conformance suite. Each test runs its own simulator process.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypersdk_core::ErrorKind;
use hypersdk_core::model::{Firmware, PowerState, VmFilter, VmRef};
use hypersdk_core::provider::Provider;
use hypersdk_testkit::conformance::{self, Fixture};
use hypersdk_testkit::vcsim::{MethodFault, Vcsim};
use hypersdk_vsphere::inventory::{DiscoverOptions, discover_vms};
use hypersdk_vsphere::snapshot::{SnapshotSpec, create_snapshot, list_snapshots, remove_snapshot};
use hypersdk_vsphere::soap::Request;
use hypersdk_vsphere::tasks::wait_for_task;
use hypersdk_vsphere::types::MoRef;
use hypersdk_vsphere::{Client, ClientBuilder, VsphereProvider, vim_fault};

fn builder(sim: &Vcsim) -> ClientBuilder {
    Client::builder(sim.url().as_str())
        .credentials(sim.username(), sim.password())
        .ca_pem(sim.ca_pem().expect("the harness runs TLS"))
}

async fn connect(sim: &Vcsim) -> Client {
    builder(sim).connect().await.expect("connect to vcsim")
}

async fn calls(sim: &Vcsim, method: &str) -> u64 {
    sim.call_counts()
        .await
        .expect("call counts")
        .get(method)
        .copied()
        .unwrap_or(0)
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

/// Runs a task-returning method and waits for it.
async fn run_task(client: &Client, req: &Request) -> hypersdk_core::Result<()> {
    let task = client
        .invoke(req)
        .await?
        .child("returnval")
        .and_then(|n| n.as_moref())
        .expect("a task");
    wait_for_task(client, &task, req.method()).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_logout_and_wrong_password() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    assert_eq!(
        client.api_version(),
        "6.5",
        "version from the service content"
    );
    assert_eq!(client.service_content().about.api_type, "VirtualCenter");
    assert_eq!(client.session_generation(), 1);
    assert_eq!(calls(&sim, "Login").await, 1);
    let dbg = format!("{client:?}");
    assert!(!dbg.contains(sim.password()), "{dbg}");

    // Wrong password: Unauthenticated, not retried, no secret in messages.
    let logins = calls(&sim, "Login").await;
    let e = Client::builder(sim.url().as_str())
        .credentials(sim.username(), "not-the-password")
        .ca_pem(sim.ca_pem().expect("ca"))
        .connect()
        .await
        .expect_err("wrong password");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(!e.is_retryable());
    assert_eq!(
        vim_fault(&e).map(|f| f.fault_type.as_str()),
        Some("InvalidLogin")
    );
    assert!(!format!("{e} {e:?}").contains("not-the-password"));
    assert_eq!(
        calls(&sim, "Login").await,
        logins + 1,
        "InvalidLogin was retried"
    );

    // Credentials in the URL work too, and are not kept in it.
    let mut url = sim.url().clone();
    url.set_username(sim.username()).expect("user");
    url.set_password(Some(sim.password())).expect("password");
    let c2 = Client::builder(url.as_str())
        .ca_pem(sim.ca_pem().expect("ca"))
        .connect()
        .await
        .expect("credentials from the URL");
    assert!(!c2.url().contains(sim.password()));
    c2.logout().await.expect("logout");

    client.logout().await.expect("logout");
    assert_eq!(calls(&sim, "Logout").await, 2);
    let e = discover_vms(&client, &DiscoverOptions::default())
        .await
        .expect_err("calls after logout fail");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_verification_and_thumbprint_pinning() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let sha1 = sim.thumbprint_sha1().expect("sha1").to_owned();
    let sha256 = sim.thumbprint_sha256().expect("sha256").to_owned();
    let creds = |b: ClientBuilder| b.credentials(sim.username(), sim.password());

    // Pins in vSphere's form and in lower-case hex without colons.
    let c = creds(Client::builder(sim.url().as_str()).pin_thumbprint(&sha1))
        .connect()
        .await
        .expect("SHA-1 pin");
    c.logout().await.expect("logout");
    let plain256 = sha256.replace(':', "").to_lowercase();
    let c = creds(Client::builder(sim.url().as_str()).pin_thumbprint(&plain256))
        .connect()
        .await
        .expect("SHA-256 pin");
    c.logout().await.expect("logout");

    // A wrong pin, or a server the system roots do not know: refused in the
    // handshake, and the server saw no SOAP call at all (no Login, not even
    // RetrieveServiceContent), so no credential went on the wire.
    let before = sim.call_counts().await.expect("counts");
    let mut wrong = sha256.clone();
    wrong.replace_range(0..2, if wrong.starts_with("00") { "11" } else { "00" });
    for b in [
        Client::builder(sim.url().as_str()).pin_thumbprint(&wrong),
        Client::builder(sim.url().as_str()),
    ] {
        let e = creds(b).connect().await.expect_err("untrusted certificate");
        let msg = e.to_string();
        assert!(
            msg.contains("TLS handshake") && msg.contains("nothing was sent"),
            "{msg}"
        );
        assert!(
            !e.is_retryable(),
            "a certificate failure is not transient: {e}"
        );
        assert!(!msg.contains(sim.password()));
    }
    let e = creds(Client::builder(sim.url().as_str()).pin_thumbprint(&wrong))
        .connect()
        .await
        .expect_err("wrong pin");
    assert!(
        e.to_string().contains(&sha256),
        "names what the server has: {e}"
    );
    assert_eq!(
        sim.call_counts().await.expect("counts"),
        before,
        "the server saw requests from clients that must not trust it"
    );
    assert!(before.get("Login").is_some_and(|n| *n == 2));

    // Insecure only when asked by name; conflicting policies are refused.
    let c = creds(Client::builder(sim.url().as_str()).danger_accept_invalid_certs())
        .connect()
        .await
        .expect("insecure");
    c.logout().await.expect("logout");
    let e = creds(
        Client::builder(sim.url().as_str())
            .pin_thumbprint(&sha1)
            .danger_accept_invalid_certs(),
    )
    .connect()
    .await
    .expect_err("pin + insecure");
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    // RetrieveServiceContent, Login and Logout of the insecure client only.
    assert_eq!(
        total(&sim.call_counts().await.expect("counts")),
        total(&before) + 3
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_sessions_are_renewed_once_for_concurrent_calls() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let provider = Arc::new(VsphereProvider::new(client.clone()));
    let all = provider.discover(&VmFilter::all()).await.expect("discover");
    assert_eq!(all.len(), 4);

    // Between calls: the next discovery logs in again by itself.
    assert!(sim.expire_sessions().await.expect("expire") >= 1);
    assert_eq!(
        provider
            .discover(&VmFilter::all())
            .await
            .expect("after expiry"),
        all
    );
    assert_eq!(calls(&sim, "Login").await, 2);
    assert_eq!(client.session_generation(), 2);

    // Eight concurrent calls meet the expired session: one re-login. The
    // by-id reads see vcsim's missingSet form of NotAuthenticated.
    sim.expire_sessions().await.expect("expire");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let p = Arc::clone(&provider);
        let id = all[i % all.len()].id.clone();
        tasks.push(tokio::spawn(async move { p.vm(&VmRef::id(id)).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("vm after expiry");
    }
    assert_eq!(
        calls(&sim, "Login").await,
        3,
        "concurrent calls logged in more than once"
    );
    assert_eq!(client.session_generation(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_lost_again_right_after_a_relogin_is_renewed_again() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    // The call meets NotAuthenticated, logs in, meets it again (the new
    // session was lost too), logs in once more and succeeds.
    sim.fail_method(MethodFault::fault("CurrentTime", "NotAuthenticated").times(2))
        .await
        .expect("rule");
    let req = Request::new(
        "CurrentTime",
        &MoRef::new("ServiceInstance", "ServiceInstance"),
    );
    client
        .invoke_idempotent(&req)
        .await
        .expect("after two re-logins");
    assert_eq!(calls(&sim, "Login").await, 3);
    assert_eq!(client.session_generation(), 3);
    // Bounded: a third loss in a row is an error, not a loop.
    sim.fail_method(MethodFault::fault("CurrentTime", "NotAuthenticated").times(3))
        .await
        .expect("rule");
    let e = client.invoke_idempotent(&req).await.expect_err("bounded");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert_eq!(calls(&sim, "Login").await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn paged_discovery_survives_a_session_loss_between_pages() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = builder(&sim).page_size(2).connect().await.expect("connect");
    let opts = DiscoverOptions::default();
    let first = discover_vms(&client, &opts).await.expect("paged discovery");
    assert_eq!(first.len(), 4);
    let pages = calls(&sim, "ContinueRetrievePropertiesEx").await;
    assert!(
        pages >= 3,
        "expected several pages with maxObjects=2, got {pages} continues"
    );
    assert_eq!(
        calls(&sim, "RetrievePropertiesEx").await,
        1,
        "one first page"
    );

    // The session is lost after the second page: the client logs in again,
    // the old token is refused on the new session, and discovery starts
    // over once, transparently.
    sim.fail_method(
        MethodFault::fault("ContinueRetrievePropertiesEx", "NotAuthenticated").after(1),
    )
    .await
    .expect("fault rule");
    let before = sim.call_counts().await.expect("counts");
    let again = discover_vms(&client, &opts)
        .await
        .expect("discovery across a re-login");
    assert_eq!(again, first);
    assert_eq!(calls(&sim, "Login").await, 2);
    // Started over with a new view; the old token was not sent again (it
    // would have been refused with InvalidArgument, a hard error).
    assert_eq!(
        calls(&sim, "RetrievePropertiesEx").await,
        before.get("RetrievePropertiesEx").copied().unwrap_or(0) + 2
    );
    assert_eq!(
        calls(&sim, "CreateContainerView").await,
        before.get("CreateContainerView").copied().unwrap_or(0) + 2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transient_failure_between_pages_restarts_from_the_first_page() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = builder(&sim).page_size(2).connect().await.expect("connect");
    let opts = DiscoverOptions::default();
    let first = discover_vms(&client, &opts).await.expect("paged discovery");
    let before = sim.call_counts().await.expect("counts");
    let count = |c: &BTreeMap<String, u64>, m: &str| c.get(m).copied().unwrap_or(0);
    sim.fail_method(MethodFault::http_status("ContinueRetrievePropertiesEx", 503).after(1))
        .await
        .expect("fault rule");
    let again = discover_vms(&client, &opts)
        .await
        .expect("discovery across a 503 between pages");
    assert_eq!(again, first);
    let after = sim.call_counts().await.expect("counts");
    assert_eq!(
        count(&after, "RetrievePropertiesEx") - count(&before, "RetrievePropertiesEx"),
        2,
        "the read started over from page 1 once"
    );
    assert_eq!(
        count(&after, "CancelRetrievePropertiesEx") - count(&before, "CancelRetrievePropertiesEx"),
        1,
        "the abandoned token was cancelled"
    );
    assert_eq!(
        count(&after, "CreateContainerView") - count(&before, "CreateContainerView"),
        1,
        "same view, same session"
    );
    assert_eq!(count(&after, "Login"), 1);
}

/// Polls `cond` every 50 ms for up to `limit`.
async fn wait_until<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_holds_an_idle_session() {
    // vcsim checks each session every `timeout` and drops it when idle
    // longer than `timeout`: an untouched session is gone after at most
    // 2 × timeout. The keep-alive pings after 250 ms idle, far inside it.
    let timeout = Duration::from_secs(2);
    let sim = Vcsim::builder()
        .session_idle_timeout(timeout)
        .start()
        .await
        .expect("start vcsim");
    let kept = builder(&sim)
        .keep_alive(Duration::from_millis(250))
        .connect()
        .await
        .expect("connect");
    let idle = connect(&sim).await;
    let start = Instant::now();
    let waited = wait_until(Duration::from_secs(30), || async {
        start.elapsed() > 2 * timeout + Duration::from_millis(300)
            && calls(&sim, "CurrentTime").await >= 4
    })
    .await;
    assert!(waited, "too few keep-alive calls");
    discover_vms(&kept, &DiscoverOptions::default())
        .await
        .expect("kept");
    assert_eq!(
        kept.session_generation(),
        1,
        "the kept-alive session expired"
    );
    discover_vms(&idle, &DiscoverOptions::default())
        .await
        .expect("idle");
    assert_eq!(
        idle.session_generation(),
        2,
        "the idle session should have expired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_relogin_is_remembered_not_repeated() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let provider = Arc::new(VsphereProvider::new(client.clone()));
    let ids: Vec<String> = provider
        .discover(&VmFilter::all())
        .await
        .expect("discover")
        .into_iter()
        .map(|v| v.id)
        .collect();
    // The password was changed on the server and the session expired.
    sim.fail_method(MethodFault::fault("Login", "InvalidLogin").times(100))
        .await
        .expect("rule");
    sim.expire_sessions().await.expect("expire");
    let logins = calls(&sim, "Login").await;

    // Eight concurrent calls: one Login attempt, all fail with it.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let p = Arc::clone(&provider);
        let id = ids[i % ids.len()].clone();
        tasks.push(tokio::spawn(async move { p.vm(&VmRef::id(id)).await }));
    }
    for t in tasks {
        let e = t.await.expect("join").expect_err("login refused");
        assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
        assert!(!e.is_retryable());
        assert_eq!(
            vim_fault(&e).map(|f| f.fault_type.as_str()),
            Some("InvalidLogin"),
            "{e}"
        );
    }
    assert_eq!(calls(&sim, "Login").await, logins + 1, "one Login attempt");

    // Later calls fail at once, sending nothing.
    let total_before = total(&sim.call_counts().await.expect("counts"));
    let e = discover_vms(&client, &DiscoverOptions::default())
        .await
        .expect_err("still refused");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    assert!(e.to_string().contains("reconnect"), "{e}");
    assert_eq!(
        total(&sim.call_counts().await.expect("counts")),
        total_before,
        "a call was sent after the refusal"
    );

    // Fixed on the server: an explicit reconnect logs in again.
    sim.clear_faults().await.expect("clear");
    client.reconnect().await.expect("reconnect");
    assert_eq!(calls(&sim, "Login").await, logins + 2);
    provider
        .vm(&VmRef::id(ids[0].clone()))
        .await
        .expect("works again");
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_never_logs_in() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = builder(&sim)
        .keep_alive(Duration::from_millis(100))
        .connect()
        .await
        .expect("connect");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            calls(&sim, "CurrentTime").await >= 2
        })
        .await,
        "no keep-alive calls"
    );
    sim.fail_method(MethodFault::fault("Login", "InvalidLogin").times(100))
        .await
        .expect("rule");
    sim.expire_sessions().await.expect("expire");
    let logins = calls(&sim, "Login").await;
    let pings = calls(&sim, "CurrentTime").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        calls(&sim, "Login").await,
        logins,
        "the keep-alive logged in"
    );
    // It found the session gone (at most a ping or two) and paused.
    assert!(calls(&sim, "CurrentTime").await <= pings + 2);
    // A caller's call makes the one Login attempt, refused and remembered.
    let e = discover_vms(&client, &DiscoverOptions::default())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(calls(&sim, "Login").await <= logins + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_only_by_name_and_never_with_pins() {
    let sim = Vcsim::builder()
        .tls(false)
        .start()
        .await
        .expect("start vcsim");
    assert_eq!(sim.url().scheme(), "http");
    let creds = |b: ClientBuilder| b.credentials(sim.username(), sim.password());
    let before = sim.call_counts().await.expect("counts");
    for b in [
        Client::builder(sim.url().as_str()),
        Client::builder(sim.url().as_str()).pin_thumbprint(&"AB".repeat(20)),
        Client::builder(sim.url().as_str())
            .danger_allow_plain_http()
            .pin_thumbprint(&"AB".repeat(32)),
    ] {
        let e = creds(b).connect().await.expect_err("plain http refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        assert!(!e.to_string().contains(sim.password()));
    }
    assert_eq!(
        sim.call_counts().await.expect("counts"),
        before,
        "a refused client sent something"
    );
    assert_eq!(before.get("Login").copied().unwrap_or(0), 0);

    let client = creds(Client::builder(sim.url().as_str()).danger_allow_plain_http())
        .connect()
        .await
        .expect("plain http with the opt-in");
    assert_eq!(
        discover_vms(&client, &DiscoverOptions::default())
            .await
            .expect("discover")
            .len(),
        4
    );
    client.logout().await.expect("logout");
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_matches_what_vcsim_holds() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let inv = sim.inventory().await.expect("inventory");
    let vms = discover_vms(&client, &DiscoverOptions::default())
        .await
        .expect("discover");
    assert_eq!(vms.len(), inv.vms.len());
    assert_eq!(vms.len(), 4);
    for want in &inv.vms {
        let got = vms
            .iter()
            .find(|v| v.moref.value == want.entity.moref)
            .unwrap_or_else(|| panic!("{} not discovered", want.entity.name));
        let info = got.to_vm_info();
        assert_eq!(info.name, want.entity.name);
        assert_eq!(
            got.inventory_path.as_deref(),
            Some(want.entity.path.as_str())
        );
        assert_eq!(info.annotations["inventory_path"], want.entity.path);
        assert_eq!(info.uuid.as_deref(), Some(want.uuid.as_str()));
        assert_eq!(info.annotations["instance_uuid"], want.instance_uuid);
        assert_eq!(i64::from(info.cpus), i64::from(want.num_cpu));
        assert_eq!(
            info.memory_mib,
            u64::try_from(want.memory_mb).expect("memory")
        );
        assert_eq!(
            info.firmware,
            match want.firmware.as_str() {
                "efi" => Firmware::Uefi,
                "bios" => Firmware::Bios,
                _ => Firmware::Unknown,
            }
        );
        assert_eq!(info.guest_os.id.as_deref(), Some(want.guest_id.as_str()));
        assert_eq!(
            info.guest_os.description.as_deref().unwrap_or_default(),
            want.guest_full_name
        );
        let power = match want.power_state.as_str() {
            "poweredOn" => PowerState::PoweredOn,
            "poweredOff" => PowerState::PoweredOff,
            _ => PowerState::Suspended,
        };
        assert_eq!(info.power_state, power);
        assert_eq!(
            got.hardware_version.as_deref(),
            Some(want.hardware_version.as_str())
        );
        assert_eq!(got.vmx_path.as_deref(), Some(want.vmx_path.as_str()));
        assert_eq!(info.disks.len(), want.disks.len(), "{}", want.entity.name);
        for (d, w) in got.disks.iter().zip(&want.disks) {
            assert_eq!(d.key, i64::from(w.key));
            assert_eq!(
                d.capacity_bytes,
                u64::try_from(w.capacity_bytes).expect("capacity")
            );
            assert_eq!(d.file_name.as_deref(), Some(w.file_name.as_str()));
            assert_eq!(d.controller_key, Some(i64::from(w.controller_key)));
            assert_eq!(d.unit_number, Some(i64::from(w.unit_number)));
            assert_eq!(d.thin_provisioned, Some(w.thin_provisioned));
        }
        for (d, w) in info.disks.iter().zip(&want.disks) {
            assert_eq!(d.id, w.key.to_string());
            assert_eq!(d.backing.as_deref(), Some(w.file_name.as_str()));
            assert!(d.controller.is_some(), "disk {} has no controller", d.id);
            assert_eq!(
                info.annotations[&format!("disk.{}.datastore", d.id)],
                w.datastore
            );
        }
        assert_eq!(info.nics.len(), want.nics.len());
        for (n, w) in info.nics.iter().zip(&want.nics) {
            assert_eq!(n.id.as_deref(), Some(w.key.to_string().as_str()));
            assert_eq!(n.mac.as_deref(), Some(w.mac.to_lowercase().as_str()));
            assert_eq!(n.network.as_deref(), Some(w.network.as_str()));
        }
    }
    // Names sorted, as discover() promises a stable order.
    let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_by_folder_name_and_power_state() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let in_dc = discover_vms(&client, &DiscoverOptions::default().folder("/DC0/vm"))
        .await
        .expect("folder");
    assert_eq!(in_dc.len(), 4);
    let e = discover_vms(&client, &DiscoverOptions::default().folder("/DC0/vm/nope"))
        .await
        .expect_err("missing folder");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("/DC0/vm/nope"), "{e}");

    let provider = VsphereProvider::new(client.clone()).with_folder("/DC0/vm");
    let vm = provider
        .vm(&VmRef::name("DC0_H0_VM1"))
        .await
        .expect("by name");
    let off = Request::new(
        "PowerOffVM_Task",
        &MoRef::new("VirtualMachine", vm.id.clone()),
    );
    run_task(&client, &off).await.expect("power off");
    let powered_off = provider
        .discover(&VmFilter::all().with_power_state(PowerState::PoweredOff))
        .await
        .expect("filter");
    assert_eq!(
        powered_off
            .iter()
            .map(|v| v.id.as_str())
            .collect::<Vec<_>>(),
        [vm.id.as_str()]
    );
    let web = provider
        .discover(&VmFilter::all().with_name("DC0_C0_*"))
        .await
        .expect("glob");
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|v| v.name.starts_with("DC0_C0_")));

    // Other references to the same VM.
    let path = vm.annotations["inventory_path"].clone();
    for r in [
        VmRef::InventoryPath(path),
        VmRef::uuid(vm.uuid.clone().expect("uuid").to_uppercase()),
        VmRef::uuid(vm.annotations["instance_uuid"].clone()),
    ] {
        assert_eq!(provider.vm(&r).await.expect("resolve").id, vm.id, "{r}");
    }
    // A provider limited to a folder without VMs finds none of them, by
    // any kind of reference.
    let elsewhere = VsphereProvider::new(client.clone()).with_folder("/DC0/network");
    for r in [
        VmRef::id(vm.id.clone()),
        VmRef::name(vm.name.clone()),
        VmRef::uuid(vm.uuid.clone().expect("uuid")),
        VmRef::InventoryPath(vm.annotations["inventory_path"].clone()),
    ] {
        let e = elsewhere.vm(&r).await.expect_err("outside the folder");
        assert_eq!(e.kind(), ErrorKind::NotFound, "{r}: {e}");
    }
    let e = provider
        .vm(&VmRef::id("vm-99999"))
        .await
        .expect_err("missing id");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("vm-99999"));

    // A task error is mapped: powering off a powered-off VM.
    let again = Request::new(
        "PowerOffVM_Task",
        &MoRef::new("VirtualMachine", vm.id.clone()),
    );
    let e = run_task(&client, &again).await.expect_err("already off");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("InvalidPowerState"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_create_list_delete_round_trip() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let provider = VsphereProvider::new(client.clone());
    let vm = provider.vm(&VmRef::name("DC0_H0_VM0")).await.expect("vm");
    let moref = MoRef::new("VirtualMachine", vm.id.clone());
    assert!(
        provider
            .list_snapshots(&VmRef::id(vm.id.clone()))
            .await
            .expect("list")
            .is_empty()
    );

    let s1 = create_snapshot(
        &client,
        &moref,
        &SnapshotSpec::new("s1 <first> & only").description("before the move"),
    )
    .await
    .expect("s1");
    let s2 = provider
        .create_snapshot(&VmRef::id(vm.id.clone()), "s2")
        .await
        .expect("s2");
    assert_eq!(s2.parent.as_deref(), Some(s1.value.as_str()));
    assert!(s2.id.starts_with("snapshot-"), "{}", s2.id);
    let s3 = create_snapshot(&client, &moref, &SnapshotSpec::new("s3").quiesce(true))
        .await
        .expect("s3");

    let list = list_snapshots(&client, &moref).await.expect("list");
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["s1 <first> & only", "s2", "s3"]);
    assert_eq!(list[0].description.as_deref(), Some("before the move"));
    assert_eq!(list[0].parent, None);
    assert_eq!(
        list[2].parent.as_ref().map(|p| p.value.as_str()),
        Some(s2.id.as_str())
    );
    assert!(list[2].current);
    assert!(list.iter().all(|s| s.created.is_some()));

    // The harness's own view agrees.
    let inv = sim.inventory().await.expect("inventory");
    let held = inv
        .vms
        .iter()
        .find(|v| v.entity.moref == vm.id)
        .expect("vm");
    assert_eq!(held.snapshots.len(), 1);
    assert_eq!(held.snapshots[0].moref, s1.value);
    assert_eq!(held.current_snapshot, s3.value);

    // Delete s2 alone: s3 moves up under s1.
    provider
        .delete_snapshot(&s2.to_ref())
        .await
        .expect("delete s2");
    let list = provider
        .list_snapshots(&VmRef::id(vm.id.clone()))
        .await
        .expect("list");
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].id, s3.value);
    assert_eq!(list[1].parent.as_deref(), Some(s1.value.as_str()));
    let e = provider
        .delete_snapshot(&s2.to_ref())
        .await
        .expect_err("twice");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // A snapshot of another VM is not found under this one.
    let other = hypersdk_core::model::SnapshotRef::new("vm-other", s3.value.clone());
    assert_eq!(
        provider
            .delete_snapshot(&other)
            .await
            .expect_err("wrong vm")
            .kind(),
        ErrorKind::NotFound
    );

    // Delete s1 with its children.
    remove_snapshot(&client, &s1, true)
        .await
        .expect("remove tree");
    assert!(
        list_snapshots(&client, &moref)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(calls(&sim, "CreateSnapshot_Task").await >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_and_transient_failures() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let client = connect(&sim).await;
    let opts = DiscoverOptions::default();

    // 503 without SOAP on a read: retried, invisible to the caller.
    sim.fail_method(MethodFault::http_status("RetrievePropertiesEx", 503))
        .await
        .expect("rule");
    let before = calls(&sim, "RetrievePropertiesEx").await;
    assert_eq!(
        discover_vms(&client, &opts).await.expect("retried").len(),
        4
    );
    assert_eq!(calls(&sim, "RetrievePropertiesEx").await, before + 2);

    // A SOAP fault is not retried and keeps its name and message.
    sim.fail_method(
        MethodFault::fault("RetrievePropertiesEx", "SystemError").message("disk on fire"),
    )
    .await
    .expect("rule");
    let e = discover_vms(&client, &opts).await.expect_err("fault");
    assert_eq!(e.kind(), ErrorKind::Other);
    assert!(!e.is_retryable());
    let f = vim_fault(&e).expect("fault kept");
    assert_eq!(
        (f.fault_type.as_str(), f.message.as_str()),
        ("SystemError", "disk on fire")
    );
    assert!(e.to_string().contains("SystemError: disk on fire"), "{e}");

    // A 503 on a call that changes something is not repeated.
    sim.fail_method(MethodFault::http_status("CreateSnapshot_Task", 503))
        .await
        .expect("rule");
    let vm = MoRef::new(
        "VirtualMachine",
        discover_vms(&client, &opts).await.expect("vms")[0]
            .moref
            .value
            .clone(),
    );
    let e = create_snapshot(&client, &vm, &SnapshotSpec::new("x"))
        .await
        .expect_err("503");
    // The server may have started the task: not retryable, and said so.
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("outcome unknown")
            && msg.contains("CreateSnapshot_Task")
            && msg.contains("503"),
        "{msg}"
    );
    assert_eq!(calls(&sim, "CreateSnapshot_Task").await, 1);

    // A host vCenter cannot reach for a moment: a read is retried ...
    sim.fail_method(MethodFault::fault(
        "RetrievePropertiesEx",
        "HostCommunication",
    ))
    .await
    .expect("rule");
    let before = calls(&sim, "RetrievePropertiesEx").await;
    discover_vms(&client, &opts).await.expect("retried");
    assert_eq!(calls(&sim, "RetrievePropertiesEx").await, before + 2);
    // ... a change is not.
    sim.fail_method(MethodFault::fault(
        "CreateSnapshot_Task",
        "HostNotConnected",
    ))
    .await
    .expect("rule");
    let e = create_snapshot(&client, &vm, &SnapshotSpec::new("y"))
        .await
        .expect_err("host not connected");
    assert!(!e.is_retryable(), "{e}");
    assert_eq!(
        vim_fault(&e).map(|f| f.fault_type.as_str()),
        Some("HostNotConnected")
    );
    assert_eq!(calls(&sim, "CreateSnapshot_Task").await, 2);

    // Unknown snapshot: NotFound from ManagedObjectNotFound.
    let e = remove_snapshot(
        &client,
        &MoRef::new("VirtualMachineSnapshot", "snapshot-424242"),
        false,
    )
    .await
    .expect_err("missing");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite() {
    // ExportVm needs a powered-off VM.
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    sim.seed_disk("DC0_H0_VM0", 0, vec![0x5Au8; 64 << 10])
        .await
        .expect("seed disk");
    let provider = VsphereProvider::new(connect(&sim).await);
    let fx = Fixture::new(VmRef::name("DC0_H0_VM0"));
    conformance::capabilities_are_honoured(&provider, &fx).await;
    conformance::discover_and_lookup(&provider, &fx).await;
    conformance::vm_info_is_coherent(&provider, &fx).await;
    conformance::snapshot_lifecycle(&provider, &fx).await;
    conformance::open_disk_reads_ranges(&provider, &fx).await;
    conformance::snapshot_disk_is_frozen(&provider, &fx).await;
    conformance::changed_extents_track_writes(&provider, &fx).await;
    // vcsim's RemoveSnapshot deletes the files listed in the snapshot's
    // layout, which include the VM's base disk (a simulator quirk: real
    // vSphere consolidates instead). Put the disk back before exporting.
    sim.seed_disk("DC0_H0_VM0", 0, vec![0x5Au8; 64 << 10])
        .await
        .expect("re-seed disk");
    conformance::export_yields_every_disk(&provider, &fx).await;
    conformance::export_import_round_trip(&provider, &fx).await;
}

/// 1000 VMs: discovery time, pages and round trips (printed; run with
/// `--nocapture`, and `--release` for the release figure).
#[tokio::test(flavor = "multi_thread")]
async fn discovers_a_thousand_vms_in_pages() {
    let sim = Vcsim::builder()
        .standalone_hosts(0)
        .vms_per_pool(1000)
        .start()
        .await
        .expect("start vcsim");
    let client = connect(&sim).await;
    let before = sim.call_counts().await.expect("counts");
    let started = Instant::now();
    let vms = discover_vms(&client, &DiscoverOptions::default())
        .await
        .expect("discover");
    let elapsed = started.elapsed();
    assert_eq!(vms.len(), 1000);
    let after = sim.call_counts().await.expect("counts");
    let round_trips = total(&after) - total(&before);
    let pages = after.get("RetrievePropertiesEx").copied().unwrap_or(0)
        - before.get("RetrievePropertiesEx").copied().unwrap_or(0)
        + after
            .get("ContinueRetrievePropertiesEx")
            .copied()
            .unwrap_or(0)
        - before
            .get("ContinueRetrievePropertiesEx")
            .copied()
            .unwrap_or(0);
    // CreateContainerView + pages + DestroyView: independent of the VM count
    // but for the page count (500 objects per page).
    assert!(pages <= 4, "{pages} pages for 1000 VMs");
    assert_eq!(round_trips, pages + 2);
    assert!(
        vms.iter()
            .all(|v| !v.disks.is_empty() && v.inventory_path.is_some())
    );
    println!(
        "discovered {} VMs in {:?} ({} pages, {} SOAP round trips, {} build)",
        vms.len(),
        elapsed,
        pages,
        round_trips,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
}
