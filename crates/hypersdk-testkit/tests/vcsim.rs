//! End-to-end checks of the vcsim harness with raw SOAP over reqwest (no
//! hypersdk SOAP client exists yet). Each test runs its own simulator.

use std::time::{Duration, Instant};

use hypersdk_testkit::vcsim::{
    CbtSettings, CutTransfer, DiskFile, LeaseFault, MethodFault, StarAnswer, Vcsim, VcsimError,
};

const ENVELOPE_HEAD: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
    r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
    r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#
);
const ENVELOPE_TAIL: &str = "</soapenv:Body></soapenv:Envelope>";

/// A minimal SOAP caller: one session cookie, raw XML in and out.
struct Soap {
    http: reqwest::Client,
    url: String,
    cookie: Option<String>,
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn ok(self) -> String {
        assert_eq!(self.status, 200, "expected success, got: {}", self.body);
        self.body
    }

    /// The `xsi:type` of the SOAP fault detail, if this is a fault.
    fn fault_type(&self) -> Option<String> {
        let detail = &self.body[self.body.find("<detail>")?..];
        let at = detail.find("xsi:type=\"")? + "xsi:type=\"".len();
        Some(detail[at..].split('"').next()?.to_owned())
    }

    fn expect_fault(&self, kind: &str) {
        assert_eq!(self.status, 500, "expected a {kind} fault: {}", self.body);
        assert_eq!(self.fault_type().as_deref(), Some(kind), "{}", self.body);
    }
}

impl Soap {
    fn new(sim: &Vcsim) -> Self {
        Self {
            http: sim.reqwest_builder().build().expect("client"),
            url: sim.url().to_string(),
            cookie: None,
        }
    }

    async fn call(&mut self, body: &str) -> Reply {
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(format!("{ENVELOPE_HEAD}{body}{ENVELOPE_TAIL}"));
        if let Some(cookie) = &self.cookie {
            req = req.header("Cookie", cookie.as_str());
        }
        let resp = req.send().await.expect("SOAP request");
        if let Some(set) = resp.headers().get("set-cookie") {
            let set = set.to_str().expect("cookie");
            self.cookie = Some(set.split(';').next().unwrap_or(set).to_owned());
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("SOAP body");
        Reply { status, body }
    }

    async fn login(&mut self, user: &str, password: &str) -> Reply {
        self.call(&format!(
            r#"<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>{}</userName><password>{}</password></Login>"#,
            xml_escape(user),
            xml_escape(password)
        ))
        .await
    }

    async fn login_ok(&mut self, sim: &Vcsim) {
        self.login(sim.username(), sim.password()).await.ok();
    }

    async fn vm_container_view(&mut self) -> Reply {
        self.call(
            r#"<CreateContainerView xmlns="urn:vim25"><_this type="ViewManager">ViewManager</_this><container type="Folder">group-d1</container><type>VirtualMachine</type><recursive>true</recursive></CreateContainerView>"#,
        )
        .await
    }

    /// RetrievePropertiesEx of `paths` on one object.
    async fn props(&mut self, kind: &str, moref: &str, paths: &[&str]) -> Reply {
        let paths: String = paths
            .iter()
            .map(|p| format!("<pathSet>{p}</pathSet>"))
            .collect();
        self.call(&format!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><specSet><propSet><type>{kind}</type>{paths}</propSet><objectSet><obj type="{kind}">{}</obj></objectSet></specSet><options/></RetrievePropertiesEx>"#,
            xml_escape(moref)
        ))
        .await
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#39;", "'")
        .replace("&#xA;", "\n")
        .replace("&#x9;", "\t")
        .replace("&amp;", "&")
}

/// Texts of every `<tag …>text</tag>` (not nested in itself).
fn texts(xml: &str, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    let close = format!("</{tag}>");
    while let Some(at) = rest.find(&format!("<{tag}")) {
        let after = &rest[at + tag.len() + 1..];
        if !after.starts_with('>') && !after.starts_with(' ') {
            rest = after;
            continue;
        }
        let Some(gt) = after.find('>') else { break };
        let body = &after[gt + 1..];
        let Some(end) = body.find(&close) else { break };
        out.push(body[..end].to_owned());
        rest = &body[end + close.len()..];
    }
    out
}

fn text(xml: &str, tag: &str) -> String {
    texts(xml, tag)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}

async fn lease_state(soap: &mut Soap, lease: &str) -> String {
    let body = soap.props("HttpNfcLease", lease, &["state"]).await.ok();
    text(&body, "val")
}

#[tokio::test(flavor = "multi_thread")]
async fn service_content_login_and_tls() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    assert_eq!(sim.url().scheme(), "https");
    assert_eq!(sim.url().host_str(), Some("127.0.0.1"));
    assert_eq!(sim.url().path(), "/sdk");
    assert_eq!(sim.api_type(), "VirtualCenter");
    let sha1 = sim.thumbprint_sha1().expect("sha1 thumbprint");
    assert_eq!(sha1.len(), 20 * 3 - 1, "{sha1}");
    assert_eq!(sim.thumbprint_sha256().expect("sha256").len(), 32 * 3 - 1);
    assert!(
        sim.cert_pem()
            .expect("cert")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // A client that does not trust the harness CA is refused: the
    // certificate is really verified, not waved through.
    let untrusting = reqwest::Client::new();
    assert!(untrusting.get(sim.base_url()).send().await.is_err());

    let mut soap = Soap::new(&sim);
    let content = soap
        .call(r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#)
        .await
        .ok();
    assert_eq!(text(&content, "rootFolder"), "group-d1");
    assert_eq!(text(&content, "propertyCollector"), "propertyCollector");
    assert_eq!(text(&content, "apiType"), "VirtualCenter");
    assert_eq!(text(&content, "sessionManager"), "SessionManager");

    let wrong = soap.login(sim.username(), "not-the-password").await;
    wrong.expect_fault("InvalidLogin");
    assert!(
        soap.cookie.is_none(),
        "a failed login must not set a session cookie"
    );

    let ok = soap.login(sim.username(), sim.password()).await.ok();
    assert_eq!(text(&ok, "userName"), sim.username());
    assert!(
        soap.cookie
            .as_deref()
            .is_some_and(|c| c.starts_with("vmware_soap_session=")),
        "{:?}",
        soap.cookie
    );
    let view = soap.vm_container_view().await.ok();
    assert!(text(&view, "returnval").starts_with("session["));
}

#[tokio::test(flavor = "multi_thread")]
async fn paged_retrieve_over_container_view_of_1000_vms() {
    let started = Instant::now();
    let sim = Vcsim::builder()
        .standalone_hosts(0)
        .vms_per_pool(1000)
        .start()
        .await
        .expect("start vcsim");
    let startup = started.elapsed();
    let inventory = sim.inventory().await.expect("inventory");
    assert_eq!(inventory.vms.len(), 1000);
    assert_eq!(inventory.hosts.len(), 3);
    assert_eq!(inventory.clusters.len(), 1);

    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;
    let view = text(&soap.vm_container_view().await.ok(), "returnval");
    let retrieve = format!(
        r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><specSet><propSet><type>VirtualMachine</type><pathSet>name</pathSet><pathSet>config.instanceUuid</pathSet></propSet><objectSet><obj type="ContainerView">{}</obj><skip>true</skip><selectSet xsi:type="TraversalSpec"><name>traverseEntities</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet></specSet><options><maxObjects>300</maxObjects></options></RetrievePropertiesEx>"#,
        xml_escape(&view)
    );

    let mut page = soap.call(&retrieve).await.ok();
    let mut names = Vec::new();
    let mut sizes = Vec::new();
    let mut used_tokens = Vec::new();
    loop {
        let objects = texts(&page, "objects");
        sizes.push(objects.len());
        for o in &objects {
            let props = texts(o, "val");
            names.push(props[0].clone());
        }
        let tokens = texts(&page, "token");
        let Some(token) = tokens.first() else { break };
        used_tokens.push(token.clone());
        page = soap
            .call(&format!(
                r#"<ContinueRetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><token>{token}</token></ContinueRetrievePropertiesEx>"#
            ))
            .await
            .ok();
    }
    assert_eq!(sizes, vec![300, 300, 300, 100]);
    names.sort();
    let mut expected: Vec<String> = inventory
        .vms
        .iter()
        .map(|v| v.entity.name.clone())
        .collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "paged discovery must see every VM exactly once"
    );

    // A used token is gone.
    soap.call(&format!(
        r#"<ContinueRetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><token>{}</token></ContinueRetrievePropertiesEx>"#,
        used_tokens[0]
    ))
    .await
    .expect_fault("InvalidArgument");

    // Cancel drops the rest.
    let first = soap.call(&retrieve).await.ok();
    let token = text(&first, "token");
    soap.call(&format!(
        r#"<CancelRetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><token>{token}</token></CancelRetrievePropertiesEx>"#
    ))
    .await
    .ok();
    soap.call(&format!(
        r#"<ContinueRetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><token>{token}</token></ContinueRetrievePropertiesEx>"#
    ))
    .await
    .expect_fault("InvalidArgument");

    // Without maxObjects everything comes at once, with no token.
    let all = soap
        .call(&retrieve.replace(
            "<options><maxObjects>300</maxObjects></options>",
            "<options/>",
        ))
        .await
        .ok();
    assert_eq!(texts(&all, "objects").len(), 1000);
    assert!(texts(&all, "token").is_empty());
    eprintln!("1000-VM simulator started in {startup:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn export_vm_lease_becomes_ready_and_serves_seeded_disk_with_range() {
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let seeded = sim
        .seed_disk("DC0_H0_VM0", 0, content.clone())
        .await
        .expect("seed disk");
    assert_eq!(seeded.size, content.len() as u64);
    let inventory = sim.inventory().await.expect("inventory");
    let vm = inventory.vm("DC0_H0_VM0").expect("vm");
    assert_eq!(vm.power_state, "poweredOff");
    assert_eq!(vm.disks[0].export_key, seeded.export_key);
    let other = inventory.vm("DC0_H0_VM1").expect("vm");

    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;

    // As on vSphere, a powered-on VM cannot be exported.
    soap.call(&format!(
        r#"<PowerOnVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this></PowerOnVM_Task>"#,
        other.entity.moref
    ))
    .await
    .ok();
    soap.call(&format!(
        r#"<ExportVm xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this></ExportVm>"#,
        other.entity.moref
    ))
    .await
    .expect_fault("InvalidPowerState");

    // The lease starts initializing and becomes ready.
    sim.lease_fault(LeaseFault::ready_after(Duration::from_millis(300)))
        .await
        .expect("lease rule");
    let export = soap
        .call(&format!(
            r#"<ExportVm xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this></ExportVm>"#,
            vm.entity.moref
        ))
        .await
        .ok();
    let lease = xml_unescape(&text(&export, "returnval"));
    assert_eq!(lease_state(&mut soap, &lease).await, "initializing");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease_state(&mut soap, &lease).await != "ready" {
        assert!(Instant::now() < deadline, "lease never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let info = soap.props("HttpNfcLease", &lease, &["info"]).await.ok();
    let device_urls = texts(&info, "deviceUrl");
    assert_eq!(device_urls.len(), 1, "{info}");
    let device = &device_urls[0];
    assert_eq!(text(device, "key"), seeded.export_key);
    assert_eq!(text(device, "disk"), "true");
    assert_eq!(text(device, "targetId"), "disk-0.vmdk");
    assert_eq!(
        Some(text(device, "sslThumbprint").as_str()),
        sim.thumbprint_sha1()
    );
    assert_eq!(text(&info, "totalDiskCapacityInKB"), "1024");
    let raw_url = text(device, "url");
    assert!(raw_url.starts_with("https://*/nfc/"), "{raw_url}");
    let url = raw_url.replacen('*', &sim.host_port(), 1);

    let http = sim.reqwest_builder().build().expect("client");
    let ranged = http
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .expect("range GET");
    assert_eq!(ranged.status().as_u16(), 206);
    assert_eq!(
        ranged.headers()["content-range"].to_str().expect("header"),
        format!("bytes 1000-1999/{}", content.len())
    );
    assert_eq!(ranged.bytes().await.expect("body")[..], content[1000..2000]);

    // A cut transfer breaks mid-body; the next one is whole.
    sim.cut_nfc_after(4096).await.expect("cut rule");
    let cut = async { http.get(&url).send().await?.bytes().await };
    let cut = cut.await;
    assert!(
        cut.is_err(),
        "a cut download must fail, got {:?}",
        cut.map(|b| b.len())
    );
    let whole = http.get(&url).send().await.expect("GET");
    assert_eq!(whole.status().as_u16(), 200);
    assert_eq!(whole.bytes().await.expect("body")[..], content[..]);

    soap.call(&format!(
        r#"<HttpNfcLeaseProgress xmlns="urn:vim25"><_this type="HttpNfcLease">{}</_this><percent>100</percent></HttpNfcLeaseProgress>"#,
        xml_escape(&lease)
    ))
    .await
    .ok();
    soap.call(&format!(
        r#"<HttpNfcLeaseComplete xmlns="urn:vim25"><_this type="HttpNfcLease">{}</_this></HttpNfcLeaseComplete>"#,
        xml_escape(&lease)
    ))
    .await
    .ok();
    let gone = http.get(&url).send().await.expect("GET after complete");
    assert_eq!(gone.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn descriptor_import_and_nfc_upload_are_kept() {
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    let inventory = sim.inventory().await.expect("inventory");
    let vm = inventory.vm("DC0_C0_RP0_VM0").expect("vm");
    let pool = &vm.resource_pool;
    let datastore = &inventory.datastores[0].entity.moref;

    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;

    let descriptor = soap
        .call(&format!(
            r#"<CreateDescriptor xmlns="urn:vim25"><_this type="OvfManager">OvfManager</_this><obj type="VirtualMachine">{}</obj><cdp><ovfFiles><deviceId>{}</deviceId><path>exported-disk-0.vmdk</path><size>4242</size></ovfFiles><name>exported</name></cdp></CreateDescriptor>"#,
            vm.entity.moref, vm.disks[0].export_key
        ))
        .await
        .ok();
    let ovf = xml_unescape(&text(&descriptor, "ovfDescriptor"));
    assert!(
        ovf.contains(r#"<File ovf:href="exported-disk-0.vmdk" ovf:id="file1" ovf:size="4242"/>"#),
        "{ovf}"
    );
    assert!(ovf.contains(r#"vmw:osType="otherGuest""#), "{ovf}");
    assert!(ovf.contains(r#"ovf:capacity="1048576""#), "{ovf}");
    assert!(ovf.contains("<Name>exported</Name>"), "{ovf}");
    assert!(
        ovf.contains(r#"vmw:key="firmware" vmw:value="bios""#),
        "{ovf}"
    );

    // vcsim's own CreateImportSpec reads the descriptor back.
    let spec = soap
        .call(&format!(
            r#"<CreateImportSpec xmlns="urn:vim25"><_this type="OvfManager">OvfManager</_this><ovfDescriptor>{}</ovfDescriptor><resourcePool type="ResourcePool">{pool}</resourcePool><datastore type="Datastore">{}</datastore><cisp><locale></locale><deploymentOption></deploymentOption><entityName>hypersdk-imported</entityName></cisp></CreateImportSpec>"#,
            xml_escape(&ovf),
            xml_escape(datastore)
        ))
        .await
        .ok();
    assert!(texts(&spec, "error").is_empty(), "{spec}");
    let start = spec.find("<importSpec").expect("importSpec");
    let end = spec.find("</importSpec>").expect("importSpec end") + "</importSpec>".len();
    let import_spec = spec[start..end]
        .replacen("<importSpec", "<spec", 1)
        .replace("</importSpec>", "</spec>");

    let import = soap
        .call(&format!(
            r#"<ImportVApp xmlns="urn:vim25"><_this type="ResourcePool">{pool}</_this>{import_spec}</ImportVApp>"#
        ))
        .await
        .ok();
    let lease = xml_unescape(&text(&import, "returnval"));
    assert_eq!(lease_state(&mut soap, &lease).await, "ready");
    let info = soap.props("HttpNfcLease", &lease, &["info"]).await.ok();
    let url = text(&info, "url").replacen('*', &sim.host_port(), 1);

    let disk: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let http = sim.reqwest_builder().build().expect("client");

    // The first upload is cut after 10 000 bytes; a retry within the live
    // lease succeeds.
    sim.cut_transfer(CutTransfer::nfc_after(10_000).http_method("POST"))
        .await
        .expect("cut rule");
    let cut = http
        .post(&url)
        .header("Content-Type", "application/x-vnd.vmware-streamVmdk")
        .body(disk.clone())
        .send()
        .await;
    assert!(cut.is_err(), "a cut upload must fail, got {cut:?}");

    let put = http
        .post(&url)
        .header("Content-Type", "application/x-vnd.vmware-streamVmdk")
        .body(disk.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(put.status().as_u16(), 200);

    let uploads = sim.uploaded_files().await.expect("uploads");
    assert_eq!(uploads.len(), 2, "{uploads:?}");
    assert!(!uploads[0].complete);
    assert_eq!(uploads[0].size, 10_000);
    let up = &uploads[1];
    assert_eq!(up.vm_name, "hypersdk-imported");
    assert_eq!(up.name, "disk-0.vmdk");
    assert_eq!(up.size, disk.len() as u64);
    assert!(up.complete);
    assert_eq!(up.content_type, "application/x-vnd.vmware-streamVmdk");
    assert_eq!(std::fs::read(&up.path).expect("uploaded file"), disk);
    let imported = sim
        .read_disk("hypersdk-imported", 0, DiskFile::Backing)
        .await
        .expect("read imported disk");
    assert_eq!(imported, disk);
    let inventory = sim.inventory().await.expect("inventory");
    assert!(inventory.vm("hypersdk-imported").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_method_faults() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;

    sim.fail_method(
        MethodFault::fault("RetrievePropertiesEx", "SystemError")
            .times(2)
            .message("injected by the test"),
    )
    .await
    .expect("method rule");
    for _ in 0..2 {
        let reply = soap.props("Folder", "group-d1", &["name"]).await;
        reply.expect_fault("SystemError");
        assert_eq!(text(&reply.body, "faultstring"), "injected by the test");
    }
    let ok = soap.props("Folder", "group-d1", &["name"]).await.ok();
    assert_eq!(text(&ok, "val"), "Datacenters");

    sim.fail_method(MethodFault::http_status("CreateContainerView", 503).after(1))
        .await
        .expect("status rule");
    soap.vm_container_view().await.ok();
    assert_eq!(soap.vm_container_view().await.status, 503);
    soap.vm_container_view().await.ok();

    let counts = sim.call_counts().await.expect("calls");
    assert_eq!(counts["RetrievePropertiesEx"], 3);
    assert_eq!(counts["CreateContainerView"], 3);
    assert_eq!(counts["Login"], 1);

    match sim
        .fail_method(MethodFault::fault("Login", "NoSuchFaultType"))
        .await
    {
        Err(VcsimError::Control { status: 400, .. }) => {}
        other => panic!("an unknown fault type must be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_session_gives_not_authenticated() {
    let sim = Vcsim::builder().start().await.expect("start vcsim");
    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;
    soap.vm_container_view().await.ok();

    assert_eq!(sim.expire_sessions().await.expect("expire"), 1);

    soap.vm_container_view()
        .await
        .expect_fault("NotAuthenticated");
    // vcsim quirk kept as is: property reads without a session succeed and
    // carry NotAuthenticated in each object's missingSet.
    let props = soap.props("Folder", "group-d1", &["name"]).await.ok();
    assert!(props.contains("NotAuthenticated"), "{props}");

    // A new login (the stale cookie names no session any more) works.
    soap.login_ok(&sim).await;
    soap.vm_container_view().await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_and_drop_stops_the_process() {
    let sim = Vcsim::builder()
        .tls(false)
        .start()
        .await
        .expect("start vcsim");
    assert_eq!(sim.url().scheme(), "http");
    assert!(sim.thumbprint_sha1().is_none() && sim.ca_pem().is_none());
    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;

    let pid = sim.pid();
    let dir = sim.log_path().parent().expect("dir").to_owned();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(sim);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the harness process must be gone after drop"
    );
    assert!(!dir.exists(), "the working directory must be removed");
}

/// Runs a `*_Task` method and returns the task's `info.result` text.
async fn run_task(soap: &mut Soap, body: &str) -> String {
    let task = text(&soap.call(body).await.ok(), "returnval");
    let info = soap.props("Task", &task, &["info"]).await.ok();
    assert_eq!(text(&info, "state"), "success", "{info}");
    texts(&info, "result")
        .into_iter()
        .next()
        .unwrap_or_default()
}

async fn reconfigure_cbt(soap: &mut Soap, vm: &str, on: bool) {
    run_task(
        soap,
        &format!(
            r#"<ReconfigVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">{vm}</_this><spec><changeTrackingEnabled>{on}</changeTrackingEnabled></spec></ReconfigVM_Task>"#
        ),
    )
    .await;
}

async fn snapshot(soap: &mut Soap, vm: &str, name: &str) -> String {
    run_task(
        soap,
        &format!(
            r#"<CreateSnapshot_Task xmlns="urn:vim25"><_this type="VirtualMachine">{vm}</_this><name>{name}</name><memory>false</memory><quiesce>false</quiesce></CreateSnapshot_Task>"#
        ),
    )
    .await
}

/// The `changeId` of the only disk in an object's `config.hardware.device`.
async fn change_id(soap: &mut Soap, kind: &str, moref: &str) -> Option<String> {
    let props = soap
        .props(kind, moref, &["config.hardware.device"])
        .await
        .ok();
    texts(&props, "changeId").into_iter().next()
}

/// One QueryChangedDiskAreas call: (startOffset, length, areas).
async fn query_cda(
    soap: &mut Soap,
    vm: &str,
    snapshot: Option<&str>,
    key: i32,
    offset: u64,
    change_id: &str,
) -> Result<(u64, u64, Vec<(u64, u64)>), Reply> {
    let snap = snapshot
        .map(|s| format!(r#"<snapshot type="VirtualMachineSnapshot">{s}</snapshot>"#))
        .unwrap_or_default();
    let reply = soap
        .call(&format!(
            r#"<QueryChangedDiskAreas xmlns="urn:vim25"><_this type="VirtualMachine">{vm}</_this>{snap}<deviceKey>{key}</deviceKey><startOffset>{offset}</startOffset><changeId>{}</changeId></QueryChangedDiskAreas>"#,
            xml_escape(change_id)
        ))
        .await;
    if reply.status != 200 {
        return Err(reply);
    }
    let ret = text(&reply.body, "returnval");
    let num = |xml: &str, tag: &str| -> u64 { text(xml, tag).parse().expect("a number") };
    let areas = texts(&ret, "changedArea")
        .iter()
        .map(|a| (num(a, "start"), num(a, "length")))
        .collect();
    let head = &ret[..ret.find("<changedArea").unwrap_or(ret.len())];
    Ok((num(head, "startOffset"), num(head, "length"), areas))
}

const K64: u64 = 64 << 10;

#[tokio::test(flavor = "multi_thread")]
async fn change_tracking_and_query_changed_disk_areas() {
    let sim = Vcsim::builder()
        .autostart(false)
        .start()
        .await
        .expect("start vcsim");
    let name = "DC0_H0_VM0";
    // 4 MiB disk: block 0 and blocks 10-11 hold data.
    let mut flat = vec![0u8; 4 << 20];
    flat[5] = 1;
    flat[10 * K64 as usize..12 * K64 as usize].fill(7);
    let seeded = sim
        .seed_disk_file(name, 0, DiskFile::Flat, Some(4096), flat)
        .await
        .expect("seed");
    assert_eq!(seeded.change_id, "", "no tracking yet");
    let vm = seeded.vm.clone();
    let key = seeded.device_key;

    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;
    query_cda(&mut soap, &vm, None, key, 0, "*")
        .await
        .expect_err("tracking off")
        .expect_fault("FileFault");

    reconfigure_cbt(&mut soap, &vm, true).await;
    let caps = soap
        .props(
            "VirtualMachine",
            &vm,
            &["capability.changeTrackingSupported"],
        )
        .await
        .ok();
    assert_eq!(text(&caps, "val"), "true");
    let c0 = change_id(&mut soap, "VirtualMachine", &vm)
        .await
        .expect("a changeId once tracking is on");
    assert!(c0.ends_with("/0") && c0.starts_with("52 "), "{c0}");
    let state = sim.cbt_state().await.expect("cbt state");
    let disk = state.disk(name, key).expect("tracked");
    assert_eq!(disk.change_id, c0);
    let allocated: Vec<(u64, u64)> = disk
        .allocated_at_start
        .iter()
        .map(|a| (a.start, a.length))
        .collect();
    assert_eq!(allocated, [(0, K64), (10 * K64, 2 * K64)]);

    let s1 = snapshot(&mut soap, &vm, "s1").await;
    let c1 = change_id(&mut soap, "VirtualMachineSnapshot", &s1)
        .await
        .expect("s1 changeId");
    assert_eq!(c1, c0);

    // Block 1 (a 10-byte write), blocks 48-49 (one write across them),
    // block 10 zeroed.
    let w1 = sim
        .write_disk_at(name, 0, DiskFile::Flat, 100_000, vec![9u8; 10])
        .await
        .expect("write");
    assert!(w1.change_id.ends_with("/1"), "{}", w1.change_id);
    sim.write_disk_at(name, 0, DiskFile::Flat, 48 * K64 + 5, vec![3u8; 70_000])
        .await
        .expect("write");
    let z = sim
        .zero_disk_range(name, 0, DiskFile::Flat, 10 * K64, K64)
        .await
        .expect("zero");
    assert!(z.change_id.ends_with("/3"), "{}", z.change_id);
    let now = sim
        .read_disk(name, 0, DiskFile::Flat)
        .await
        .expect("read flat");
    assert_eq!(now.len(), 4 << 20);
    assert!(
        now[10 * K64 as usize..11 * K64 as usize]
            .iter()
            .all(|b| *b == 0)
    );
    assert_eq!(now[100_000], 9);
    // Writes past the capacity are refused.
    let past = sim
        .write_disk_at(name, 0, DiskFile::Flat, (4 << 20) - 1, vec![1u8; 2])
        .await;
    assert!(
        matches!(past, Err(VcsimError::Control { status: 400, .. })),
        "{past:?}"
    );

    let s2 = snapshot(&mut soap, &vm, "s2").await;
    let c2 = change_id(&mut soap, "VirtualMachineSnapshot", &s2)
        .await
        .expect("s2 changeId");
    assert_eq!(c2, z.change_id);
    // s1 still shows the change id of its creation.
    assert_eq!(
        change_id(&mut soap, "VirtualMachineSnapshot", &s1).await,
        Some(c1.clone())
    );

    let changed = [(K64, K64), (10 * K64, K64), (48 * K64, 2 * K64)];
    let (start, length, areas) = query_cda(&mut soap, &vm, Some(&s2), key, 0, &c1)
        .await
        .map_err(|r| r.body)
        .expect("query");
    assert_eq!((start, length), (0, 4 << 20));
    assert_eq!(areas, changed);
    let (_, _, areas) = query_cda(&mut soap, &vm, Some(&s2), key, 0, "*")
        .await
        .map_err(|r| r.body)
        .expect("query *");
    assert_eq!(areas, [(0, 2 * K64), (11 * K64, K64), (48 * K64, 2 * K64)]);
    let (_, _, areas) = query_cda(&mut soap, &vm, Some(&s1), key, 0, "*")
        .await
        .map_err(|r| r.body)
        .expect("query * at s1");
    assert_eq!(areas, [(0, K64), (10 * K64, 2 * K64)]);
    // A later change is not in s2's answer but in the current state's.
    sim.write_disk_at(name, 0, DiskFile::Flat, 60 * K64, vec![1u8])
        .await
        .expect("write");
    let (_, _, areas) = query_cda(&mut soap, &vm, Some(&s2), key, 0, &c1)
        .await
        .map_err(|r| r.body)
        .expect("query");
    assert_eq!(areas, changed);
    let (_, _, areas) = query_cda(&mut soap, &vm, None, key, 0, &c2)
        .await
        .map_err(|r| r.body)
        .expect("query current");
    assert_eq!(areas, [(60 * K64, K64)]);

    // Windows: 1 MiB at a time, then at most one area per answer.
    sim.set_cbt(&CbtSettings::default().window_bytes(1 << 20))
        .await
        .expect("cbt settings");
    let mut offset = 0;
    let mut all = Vec::new();
    let mut calls = 0;
    loop {
        let (start, length, areas) = query_cda(&mut soap, &vm, Some(&s2), key, offset, &c1)
            .await
            .map_err(|r| r.body)
            .expect("query");
        assert_eq!(start, offset);
        calls += 1;
        all.extend(areas);
        if length == 0 {
            break;
        }
        assert!(length <= 1 << 20);
        offset += length;
    }
    assert_eq!(calls, 5, "4 windows and an empty answer at the end");
    assert_eq!(all, changed);
    let cfg = sim
        .set_cbt(&CbtSettings::default().max_areas(1))
        .await
        .expect("cbt settings");
    assert_eq!((cfg.window_bytes, cfg.max_areas), (1 << 20, 1));
    let (_, length, areas) = query_cda(&mut soap, &vm, Some(&s2), key, 0, &c1)
        .await
        .map_err(|r| r.body)
        .expect("query");
    assert_eq!((length, areas), (2 * K64, vec![(K64, K64)]));

    // The "*" answers of other storage.
    sim.set_cbt(&CbtSettings::default().star(StarAnswer::Whole).max_areas(0))
        .await
        .expect("cbt settings");
    let (_, _, areas) = query_cda(&mut soap, &vm, Some(&s2), key, K64, "*")
        .await
        .map_err(|r| r.body)
        .expect("query *");
    assert_eq!(areas, [(K64, 1 << 20)]);
    sim.set_cbt(&CbtSettings::default().star(StarAnswer::Fault))
        .await
        .expect("cbt settings");
    query_cda(&mut soap, &vm, Some(&s2), key, 0, "*")
        .await
        .expect_err("* refused")
        .expect_fault("FileFault");

    // Unknown, newer and foreign change ids; offsets past the end.
    let bogus = format!("{}/1", "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00");
    for id in [bogus.as_str(), &c2] {
        query_cda(&mut soap, &vm, Some(&s1), key, 0, id)
            .await
            .expect_err("bad change id")
            .expect_fault("FileFault");
    }
    query_cda(&mut soap, &vm, Some(&s2), key, (4 << 20) + 1, &c1)
        .await
        .expect_err("past the end")
        .expect_fault("InvalidArgument");
    query_cda(&mut soap, &vm, Some(&s2), key + 1, 0, &c1)
        .await
        .expect_err("no such disk")
        .expect_fault("NotFound");

    // Turning tracking off drops the change ids; on again starts afresh.
    reconfigure_cbt(&mut soap, &vm, false).await;
    assert_eq!(change_id(&mut soap, "VirtualMachine", &vm).await, None);
    query_cda(&mut soap, &vm, None, key, 0, &c2)
        .await
        .expect_err("tracking off")
        .expect_fault("FileFault");
    assert!(sim.cbt_state().await.expect("state").disks.is_empty());
    reconfigure_cbt(&mut soap, &vm, true).await;
    let fresh = change_id(&mut soap, "VirtualMachine", &vm)
        .await
        .expect("changeId");
    assert!(fresh.ends_with("/0") && fresh != c0, "{fresh}");
    query_cda(&mut soap, &vm, None, key, 0, &c2)
        .await
        .expect_err("an id from before the reset")
        .expect_fault("FileFault");
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_timeouts_are_enforced() {
    let sim = Vcsim::builder()
        .autostart(false)
        .lease_timeout(Duration::from_secs(2))
        .start()
        .await
        .expect("start vcsim");
    let inventory = sim.inventory().await.expect("inventory");
    let vm = inventory.vm("DC0_H0_VM0").expect("vm").entity.moref.clone();
    sim.seed_disk("DC0_H0_VM0", 0, vec![1u8; 1000])
        .await
        .expect("seed");
    let mut soap = Soap::new(&sim);
    soap.login_ok(&sim).await;
    let export_body = format!(
        r#"<ExportVm xmlns="urn:vim25"><_this type="VirtualMachine">{vm}</_this></ExportVm>"#
    );
    let progress = |lease: &str, percent: u32| {
        format!(
            r#"<HttpNfcLeaseProgress xmlns="urn:vim25"><_this type="HttpNfcLease">{}</_this><percent>{percent}</percent></HttpNfcLeaseProgress>"#,
            xml_escape(lease)
        )
    };

    let lease = xml_unescape(&text(&soap.call(&export_body).await.ok(), "returnval"));
    let info = soap.props("HttpNfcLease", &lease, &["info"]).await.ok();
    assert_eq!(text(&info, "leaseTimeout"), "2");
    let url = text(&info, "url").replacen('*', &sim.host_port(), 1);
    // Kept alive by progress for longer than the timeout.
    for percent in 0..12 {
        soap.call(&progress(&lease, percent * 5)).await.ok();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(lease_state(&mut soap, &lease).await, "ready");
    let status = sim.leases().await.expect("leases");
    let mine = status.iter().find(|l| l.lease == lease).expect("listed");
    assert_eq!(
        (mine.kind.as_str(), mine.progress_calls, mine.last_percent),
        ("export", 12, 55)
    );
    assert_eq!(mine.lease_timeout, 2);

    // Then left alone: it times out.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_state(&mut soap, &lease).await != "error" {
        assert!(Instant::now() < deadline, "the lease never timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let error = soap.props("HttpNfcLease", &lease, &["error"]).await.ok();
    assert!(error.contains("Timedout"), "{error}");
    soap.call(&progress(&lease, 60))
        .await
        .expect_fault("Timedout");
    let http = sim.reqwest_builder().build().expect("client");
    let get = http.get(&url).send().await.expect("GET");
    assert_eq!(get.status().as_u16(), 409);
    let status = sim.leases().await.expect("leases");
    let mine = status.iter().find(|l| l.lease == lease).expect("listed");
    assert!(
        mine.timed_out && mine.fault.as_deref() == Some("Timedout"),
        "{mine:?}"
    );
    soap.call(&format!(
        r#"<HttpNfcLeaseAbort xmlns="urn:vim25"><_this type="HttpNfcLease">{}</_this></HttpNfcLeaseAbort>"#,
        xml_escape(&lease)
    ))
    .await
    .ok();
    assert!(
        sim.leases()
            .await
            .expect("leases")
            .iter()
            .all(|l| l.lease != lease)
    );

    // Expiring on demand, and a longer timeout for new leases.
    sim.set_lease_timeout(Duration::from_secs(600))
        .await
        .expect("timeout");
    let lease = xml_unescape(&text(&soap.call(&export_body).await.ok(), "returnval"));
    let info = soap.props("HttpNfcLease", &lease, &["info"]).await.ok();
    assert_eq!(text(&info, "leaseTimeout"), "600");
    assert_eq!(sim.expire_leases(Some(&lease)).await.expect("expire"), 1);
    assert_eq!(lease_state(&mut soap, &lease).await, "error");
    soap.call(&format!(
        r#"<HttpNfcLeaseComplete xmlns="urn:vim25"><_this type="HttpNfcLease">{}</_this></HttpNfcLeaseComplete>"#,
        xml_escape(&lease)
    ))
    .await
    .expect_fault("Timedout");
}
