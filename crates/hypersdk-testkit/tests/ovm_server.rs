//! The OVM exporter test server on the wire: reqwest over TLS trusting the
//! generated CA (and a raw TLS client where reqwest would normalise the
//! request), checked against the behaviour of the real exporter.

use std::io::{Read, Write as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use hypersdk_testkit::ovm::{DiskSpec, OvmExporter, Route, VmSpec};
use reqwest::{Method, StatusCode, header};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const CS: u64 = 64 * KIB;

/// A server, a client trusting its CA (no redirects followed), a token.
struct Api {
    server: OvmExporter,
    client: reqwest::Client,
    token: String,
}

fn client_for(server: &OvmExporter) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(server.ca_pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

impl Api {
    async fn start(server: OvmExporter) -> Api {
        let client = client_for(&server);
        let mut api = Api {
            server,
            client,
            token: String::new(),
        };
        api.token = api.login().await;
        api
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.endpoint())
    }

    async fn login(&self) -> String {
        let response = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .body(
                json!({"username": self.server.username(), "password": self.server.password()})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
    }

    async fn call(&self, method: Method, path: &str) -> (StatusCode, header::HeaderMap, Vec<u8>) {
        let response = self.request(method, path).send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        (status, headers, body)
    }

    async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let (status, _, body) = self.call(Method::GET, path).await;
        (status, body)
    }

    async fn json(&self, method: Method, path: &str) -> Value {
        let (status, _, body) = self.call(method, path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            body.last(),
            Some(&b'\n'),
            "{path}: JSON ends with a newline"
        );
        serde_json::from_slice(&body).unwrap()
    }

    async fn create(&self, vm: &str) -> Value {
        self.json(Method::POST, &format!("/api/v1/vms/{vm}/snapshots"))
            .await
    }

    async fn snapshot(&self, vm: &str, id: &str, query: &str) -> Value {
        self.json(
            Method::GET,
            &format!("/api/v1/vms/{vm}/snapshots/{id}{query}"),
        )
        .await
    }
}

fn error_body(body: &[u8]) -> (String, String) {
    let v: Value = serde_json::from_slice(body).unwrap();
    (
        v["error"].as_str().unwrap().to_owned(),
        v["details"].as_str().unwrap().to_owned(),
    )
}

fn chunks(disk: &Value) -> Vec<(u64, u64, u64)> {
    disk["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["start"].as_u64().unwrap(),
                c["length"].as_u64().unwrap(),
                c["physical_start"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn sha256_file(path: &std::path::Path) -> String {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn one_vm(size: u64) -> (VmSpec, String, String) {
    let disk = DiskSpec::random("xvda", size);
    let name = disk.name.clone();
    let vm = VmSpec::new("web01").with_disk(disk);
    let id = vm.id.clone();
    (vm, id, name)
}

fn forge(secret: &[u8], claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{sig}")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// One raw HTTP/1.1 exchange over TLS (`Connection: close`): the status
/// line, the header block and the body as sent, plus the leaf certificate.
async fn raw(server: &OvmExporter, request: &str) -> (String, String, Vec<u8>, Vec<u8>) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(server.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let body = out[split + 4..].to_vec();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (status.to_owned(), headers.to_owned(), body, leaf)
}

#[tokio::test]
async fn tls_login_and_jwt() {
    let server = OvmExporter::builder()
        .credentials("ovmuser", "s3cret")
        .jwt_ttl(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    assert!(server.endpoint().starts_with("https://127.0.0.1:"));
    assert!(!server.endpoint().ends_with('/'));
    // The thumbprint is the leaf's; the CA signed it (the raw client
    // verifies against the CA only).
    let (status, _, _, leaf) = raw(
        &server,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let thumb: Vec<String> = Sha256::digest(&leaf)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(server.thumbprint_sha256(), thumb.join(":"));
    // A client that does not trust the CA fails.
    let untrusting = reqwest::Client::builder().build().unwrap();
    assert!(untrusting.get(server.endpoint()).send().await.is_err());

    let client = client_for(&server);
    let login = |path: &'static str, body: String| {
        client
            .post(format!("{}{path}", server.endpoint()))
            .body(body)
            .send()
    };
    for path in ["/api/v1/auth/login", "/api/v1/auth/login/"] {
        let response = login(path, r#"{"username":"ovmuser","password":"s3cret"}"#.into())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.text().await.unwrap();
        assert!(body.ends_with("}\n"));
        let token = serde_json::from_str::<Value>(&body).unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["user"], "ovmuser");
        assert_eq!(claims["iss"], "gopherbin");
        let exp = claims["exp"].as_i64().unwrap();
        assert!((now() + 3590..=now() + 3600).contains(&exp), "exp {exp}");
        // The signature is HS256 with the server's secret.
        let mut mac = Hmac::<Sha256>::new_from_slice(server.jwt_secret()).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()),
            parts[2]
        );
        // The claims are in the Go struct's order.
        assert!(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
                .unwrap()
                .starts_with(r#"{"user":"ovmuser","exp":"#)
        );
    }
    // Login is POST only: GET is the public catch-all 404.
    let response = client
        .get(format!("{}/api/v1/auth/login", server.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.text().await.unwrap(),
        "{\"error\":\"Not found\",\"details\":\"Resource not found\"}\n"
    );
    // Go decodes the first JSON value, keys case-insensitively.
    let response = login(
        "/api/v1/auth/login",
        r#"{"USERNAME":"ovmuser","Password":"s3cret"} x"#.into(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for bad in ["", "not json", "[1]", r#"{"username":5}"#] {
        let response = login("/api/v1/auth/login", bad.into()).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.bytes().await.unwrap();
        assert_eq!(
            error_body(&body),
            ("Bad Request".into(), "invalid request".into())
        );
    }
    let response = login(
        "/api/v1/auth/login",
        r#"{"username":"ovmuser","password":"no"}"#.into(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (category, details) = error_body(&response.bytes().await.unwrap());
    assert_eq!(category, "Not Authorized");
    assert!(details.starts_with("failed to login: "), "{details}");
    assert_eq!(server.stats().logins, 8);
    assert_eq!(server.stats().by_route["Login"], 8);
}

#[tokio::test]
async fn authorization_header_and_expiry() {
    let api = Api::start(OvmExporter::builder().start().await.unwrap()).await;
    let with_auth = |value: Option<String>| {
        let mut request = api.client.get(api.url("/api/v1/vms"));
        if let Some(value) = value {
            request = request.header(header::AUTHORIZATION, value);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let ctype = response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_owned());
            (status, ctype, response.text().await.unwrap())
        }
    };
    let denied =
        "{\"error\":\"Authentication failed\",\"details\":\"Invalid authentication token\"}\n";
    let token = api.token.clone();
    let secret = api.server.jwt_secret().to_vec();
    for value in [
        None,
        Some(String::new()),
        Some("Bearer".to_owned()),
        Some(token.clone()),
        Some(format!("Bearer {token} extra")),
        Some(format!("Bearer  {token}")),
        Some(format!("Bearer {token}x")),
        Some(format!(
            "Bearer {}",
            forge(b"wrong secret", &json!({"user": "admin"}))
        )),
        Some(format!(
            "Bearer {}",
            forge(
                &secret,
                &json!({"user": "admin", "exp": now() - 5, "iss": "gopherbin"})
            )
        )),
        Some(format!(
            "Bearer {}",
            forge(&secret, &json!({"nbf": now() + 3600}))
        )),
    ] {
        let (status, ctype, body) = with_auth(value.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:?}");
        assert_eq!(body, denied);
        // Set after WriteHeader, so Go sniffs the type.
        assert_eq!(ctype.as_deref(), Some("text/plain; charset=utf-8"));
    }
    // The scheme word is not checked; a forged token with the secret works.
    for value in [
        format!("Bearer {token}"),
        format!("Token {token}"),
        format!(
            "Bearer {}",
            forge(&secret, &json!({"user": "x", "exp": now() + 60}))
        ),
    ] {
        let (status, ctype, body) = with_auth(Some(value)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(body, "[]\n");
    }
    // Unknown paths under /api/v1: 401 without a token, 404 JSON with one.
    let response = api
        .client
        .get(api.url("/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = api.get("/api/v1/nothing/here/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        error_body(&body),
        ("Not found".into(), "Resource not found".into())
    );
    // Outside /api/v1: the router's plain 404, no token needed.
    for path in ["/", "/vms", "/api/v1", "/api/v2/vms"] {
        let response = api.client.get(api.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(response.text().await.unwrap(), "404 page not found\n");
    }
    // Expiring every token: 401 until the next login.
    api.server.faults().expire_tokens();
    let (status, _, _) = with_auth(Some(format!("Bearer {token}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let fresh = api.login().await;
    let (status, _, _) = with_auth(Some(format!("Bearer {fresh}"))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn routes_slash_forms_redirects_and_methods() {
    let (vm, id, disk) = one_vm(MIB);
    let api = Api::start(OvmExporter::builder().vm(vm).start().await.unwrap()).await;
    let snap = api.create(&id).await["id"].as_str().unwrap().to_owned();
    let data = format!("/api/v1/vms/{id}/snapshots/{snap}/disks/{disk}");
    for path in [
        "/api/v1/vms".to_owned(),
        format!("/api/v1/vms/{id}"),
        format!("/api/v1/vms/{id}/snapshots"),
        format!("/api/v1/vms/{id}/snapshots/{snap}"),
        data.clone(),
    ] {
        for variant in [path.clone(), format!("{path}/")] {
            let (status, _) = api.get(&variant).await;
            assert_eq!(status, StatusCode::OK, "{variant}");
        }
    }
    let (status, headers, body) = api.call(Method::HEAD, &format!("{data}/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], MIB.to_string());
    assert!(body.is_empty());
    // Create both ways, delete both ways, purge both ways.
    let second = api
        .json(Method::POST, &format!("/api/v1/vms/{id}/snapshots/"))
        .await;
    let second = second["id"].as_str().unwrap();
    let (status, _, body) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/vms/{id}/snapshots/{second}/"),
        )
        .await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    let (status, headers, body) = api
        .call(Method::DELETE, &format!("/api/v1/vms/{id}/snapshots/"))
        .await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert!(headers.get(header::CONTENT_TYPE).is_none());
    assert!(api.server.snapshot_ids(&id).is_empty());
    let (status, _, _) = api
        .call(Method::DELETE, &format!("/api/v1/vms/{id}/snapshots"))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Wrong methods are the API's 404 JSON, never 405.
    for (method, path) in [
        (Method::POST, "/api/v1/vms".to_owned()),
        (Method::DELETE, format!("/api/v1/vms/{id}")),
        (Method::PUT, format!("/api/v1/vms/{id}/snapshots")),
        (Method::HEAD, format!("/api/v1/vms/{id}")),
        (Method::POST, format!("/api/v1/vms/{id}/snapshots/{snap}")),
        (Method::DELETE, data.clone()),
    ] {
        let (status, _, body) = api.call(method.clone(), &path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        if method != Method::HEAD {
            assert_eq!(error_body(&body).1, "Resource not found");
        }
    }

    // Paths that are not clean: 301 to the clean path, query kept, before
    // any token check.
    let response = api
        .client
        .post(api.url("//api/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(response.headers()[header::LOCATION], "/api/v1/auth/login");
    let response = api
        .client
        .get(api.url(&format!("/api/v1//vms/{id}/snapshots/?squashChunks=false")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        response.headers()[header::LOCATION],
        format!("/api/v1/vms/{id}/snapshots/?squashChunks=false")
    );
    assert!(response.bytes().await.unwrap().is_empty());
    let (status, headers, body, _) = raw(
        &api.server,
        "GET /api/v1/./vms/x/../ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 301 Moved Permanently");
    assert!(
        headers.contains("Location: /api/v1/vms/\r\n")
            || headers.ends_with("Location: /api/v1/vms/"),
        "{headers}"
    );
    assert!(body.is_empty());
    // Title-case header names, like Go.
    assert!(headers.contains("Content-Length: 0"), "{headers}");
    let stats = api.server.stats();
    assert!(stats.by_route["Redirect"] >= 3);
    assert!(stats.by_route["NotFound"] >= 6);
    assert_eq!(stats.by_route["CreateSnapshot"], 2);
}

#[tokio::test]
async fn vms_and_error_statuses() {
    let good = VmSpec::new("web01")
        .with_disk(DiskSpec::new("0004fb0000120000aaaa.img", "xvda", 2 * MIB))
        .with_disk(DiskSpec::new("0004fb0000120000bbbb.img", "xvdb", MIB))
        .with_phy_disk("/dev/mapper/lun0");
    let iso = VmSpec::new("installer")
        .with_disk(DiskSpec::new("0004fb0000120000cccc.img", "xvda", MIB))
        .with_disk(DiskSpec::new("0004fb0000150000dddd.iso", "xvdc:cdrom", MIB).incompatible());
    let bare = VmSpec::new("empty");
    let (good_id, iso_id) = (good.id.clone(), iso.id.clone());
    let api = Api::start(
        OvmExporter::builder()
            .vm(good.clone())
            .vm(iso.clone())
            .start()
            .await
            .unwrap(),
    )
    .await;
    api.server.add_vm(bare.clone());
    assert!(api.server.try_add_vm(bare.clone()).is_err());

    let list = api.json(Method::GET, "/api/v1/vms").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let by_id = |id: &str| list.iter().find(|v| v["name"] == id).unwrap().clone();
    let vm = by_id(&good_id);
    let keys: Vec<&str> = vm.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = vec![
        "friendly_name",
        "name",
        "uuid",
        "disks",
        "snapshot_compatible",
        "snapshots",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(vm["friendly_name"], "web01");
    assert_eq!(vm["uuid"], good.uuid);
    assert_eq!(good.uuid.replace('-', ""), good_id);
    assert_eq!(good_id.len(), 32);
    assert_eq!(vm["snapshot_compatible"], true);
    assert_eq!(vm["snapshots"], json!([]));
    // phy: disks are skipped, faithfully; the testkit still knows them.
    assert_eq!(vm["disks"].as_array().unwrap().len(), 2);
    assert_eq!(api.server.phy_disks(&good_id), vec!["/dev/mapper/lun0"]);
    let disk = &vm["disks"][0];
    assert_eq!(disk["name"], "0004fb0000120000aaaa.img");
    assert_eq!(disk["device_name"], "xvda");
    assert_eq!(disk["mode"], "w");
    assert_eq!(disk["snapshot_compatible"], true);
    let live = api.server.live_disk_path(&good_id, "xvda");
    assert_eq!(disk["path"], live.display().to_string());
    assert_eq!(std::fs::metadata(&live).unwrap().len(), 2 * MIB);
    assert_eq!(by_id(&iso_id)["snapshot_compatible"], false);
    assert_eq!(by_id(&iso_id)["disks"][1]["snapshot_compatible"], false);
    assert_eq!(by_id(&bare.id)["snapshot_compatible"], true);
    assert_eq!(by_id(&bare.id)["disks"], json!([]));
    assert_eq!(
        api.json(Method::GET, &format!("/api/v1/vms/{good_id}"))
            .await,
        vm
    );

    // Unknown VM: 500 "could not find VM with ID".
    let missing = "0004fb00000600000000000000000000";
    for (method, path) in [
        (Method::GET, format!("/api/v1/vms/{missing}")),
        (Method::GET, format!("/api/v1/vms/{missing}/snapshots")),
        (Method::POST, format!("/api/v1/vms/{missing}/snapshots")),
        (Method::DELETE, format!("/api/v1/vms/{missing}/snapshots")),
    ] {
        let (status, headers, body) = api.call(method.clone(), &path).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            error_body(&body),
            (
                "Server error".into(),
                format!("could not find VM with ID {missing}")
            )
        );
    }
    // Not snapshot-compatible: 400.
    let (status, _, body) = api
        .call(Method::POST, &format!("/api/v1/vms/{iso_id}/snapshots"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_body(&body),
        (
            "Bad Request".into(),
            "VM does not support reflink cloning".into()
        )
    );
    // Unknown snapshot: 500 "not found"; another VM's: 409; DELETE of an
    // unknown one: 200.
    let snap = api.create(&good_id).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = api
        .get(&format!(
            "/api/v1/vms/{good_id}/snapshots/{}",
            "0".repeat(8)
        ))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error_body(&body),
        ("Server error".into(), "not found".into())
    );
    let (status, body) = api
        .get(&format!("/api/v1/vms/{}/snapshots/{snap}", bare.id))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        error_body(&body),
        ("Conflict".into(), "VM id missmatch".into())
    );
    let (status, _, _) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/vms/{}/snapshots/{snap}", bare.id),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, body) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/vms/{good_id}/snapshots/nope"),
        )
        .await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    // Success bodies carry no JSON content type (Go sniffs text/plain).
    let (_, headers, _) = api.call(Method::GET, "/api/v1/vms").await;
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn chunks_squash_and_compare_to() {
    let (vm, id, disk) = one_vm(4 * MIB);
    let other = VmSpec::new("other").with_disk(DiskSpec::random("xvda", MIB));
    let other_id = other.id.clone();
    let api = Api::start(
        OvmExporter::builder()
            .vm(vm)
            .vm(other)
            .start()
            .await
            .unwrap(),
    )
    .await;
    let s = &api.server;

    // An empty thin disk: chunks [] (never null) raw and squashed.
    let empty = api.create(&id).await;
    assert_eq!(empty["disks"][0]["chunks"], json!([]));
    let empty_id = empty["id"].as_str().unwrap().to_owned();
    let shape = &empty["disks"][0];
    let keys: Vec<&str> = shape
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "parent_path",
        "path",
        "snapshot_id",
        "chunks",
        "name",
        "repo_mountpoint",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(empty["vm_id"], id.as_str());
    assert_eq!(shape["snapshot_id"], empty_id.as_str());
    assert_eq!(shape["name"], disk.as_str());
    assert_eq!(
        shape["parent_path"],
        s.live_disk_path(&id, &disk).display().to_string()
    );
    assert_eq!(
        shape["repo_mountpoint"],
        s.repo_mountpoint().display().to_string()
    );
    let snap_file = s.snapshot_disk_path(&id, &empty_id, &disk).unwrap();
    assert_eq!(shape["path"], snap_file.display().to_string());
    assert!(
        snap_file.starts_with(
            s.repo_mountpoint()
                .join("CoriolisSnapshots")
                .join(&empty_id)
        )
    );

    // Three writes: 256 KiB at 0 (one extent), 128 KiB at 1 MiB, then one
    // cluster at 256 KiB (logically adjacent to the first, physically not).
    s.write(&id, &disk, 0, &pattern(256 * KIB as usize, 1))
        .unwrap();
    s.write(&id, &disk, MIB, &pattern(128 * KIB as usize, 2))
        .unwrap();
    s.write(&id, "xvda", 256 * KIB + 10, b"tail").unwrap();
    let s1 = api.create(&id).await;
    let s1_id = s1["id"].as_str().unwrap().to_owned();
    // Raw chunks from create: FIEMAP order (by start), runs contiguous both
    // logically and physically, whole clusters, physical addresses in bytes.
    let raw1 = chunks(&s1["disks"][0]);
    let p = raw1[0].2;
    assert!(p > 0);
    assert_eq!(
        raw1,
        vec![
            (0, 4 * CS, p),
            (4 * CS, CS, p + 6 * CS),
            (MIB, 2 * CS, p + 4 * CS)
        ]
    );
    // GET squashes unless squashChunks parses as false (Go ParseBool;
    // anything unparsable is false); logical adjacency only, first physical.
    let squashed = vec![(0, 5 * CS, p), (MIB, 2 * CS, p + 4 * CS)];
    for q in [
        "",
        "?squashChunks=",
        "?squashChunks=True",
        "?squashChunks=1",
        "?squashChunks=t",
    ] {
        let got = api.snapshot(&id, &s1_id, q).await;
        assert_eq!(chunks(&got["disks"][0]), squashed, "{q}");
    }
    for q in [
        "?squashChunks=False",
        "?squashChunks=false",
        "?squashChunks=0",
        "?squashChunks=F",
        "?squashChunks=yes",
    ] {
        let got = api.snapshot(&id, &s1_id, q).await;
        assert_eq!(chunks(&got["disks"][0]), raw1, "{q}");
    }
    // The snapshot file is a sparse copy of the live disk at creation.
    let s1_file = s.snapshot_disk_path(&id, &s1_id, &disk).unwrap();
    let s1_sha = sha256_file(&s1_file);
    assert_eq!(s1_sha, sha256_file(&s.live_disk_path(&id, &disk)));
    assert_eq!(
        s.live_allocated_ranges(&id, &disk),
        vec![(0, 5 * CS), (MIB, 2 * CS)]
    );

    // Nothing changed since s1: the unsquashed diff is null, squashed [].
    let s2 = api.create(&id).await;
    let s2_id = s2["id"].as_str().unwrap().to_owned();
    assert_eq!(chunks(&s2["disks"][0]), raw1);
    let diff = api
        .snapshot(
            &id,
            &s2_id,
            &format!("?squashChunks=false&compareTo={s1_id}"),
        )
        .await;
    assert_eq!(diff["disks"][0]["chunks"], Value::Null);
    let diff = api
        .snapshot(&id, &s2_id, &format!("?compareTo={s1_id}"))
        .await;
    assert_eq!(diff["disks"][0]["chunks"], json!([]));
    let diff = api
        .snapshot(
            &id,
            &s2_id,
            &format!("?compareTo={empty_id}&squashChunks=False"),
        )
        .await;
    assert_eq!(chunks(&diff["disks"][0]), raw1);

    // A 4 KiB overwrite inside the first extent copies one cluster on
    // write and splits the extent; a trim frees the extent at 1 MiB.
    s.write(&id, &disk, CS + 100, &[7u8; 4096]).unwrap();
    s.trim(&id, &disk, MIB, 2 * CS).unwrap();
    let s3 = api.create(&id).await;
    let s3_id = s3["id"].as_str().unwrap().to_owned();
    let q = p + 7 * CS; // the next fresh physical cluster
    assert_eq!(
        chunks(&s3["disks"][0]),
        vec![
            (0, CS, p),
            (CS, CS, q),
            (2 * CS, 2 * CS, p + 2 * CS),
            (4 * CS, CS, p + 6 * CS)
        ]
    );
    // compareTo over-reports: every fragment of the split extent comes
    // back (256 KiB for 64 KiB changed), and the freed range is missing.
    let diff = api
        .snapshot(
            &id,
            &s3_id,
            &format!("?squashChunks=false&compareTo={s2_id}"),
        )
        .await;
    assert_eq!(
        chunks(&diff["disks"][0]),
        vec![(0, CS, p), (CS, CS, q), (2 * CS, 2 * CS, p + 2 * CS)]
    );
    let diff = api
        .snapshot(&id, &s3_id, &format!("?compareTo={s1_id}"))
        .await;
    assert_eq!(chunks(&diff["disks"][0]), vec![(0, 4 * CS, p)]);
    assert_eq!(
        sha256_file(&s1_file),
        s1_sha,
        "older snapshots never change"
    );
    assert_eq!(
        sha256_file(&s.snapshot_disk_path(&id, &s3_id, &disk).unwrap()),
        sha256_file(&s.live_disk_path(&id, &disk))
    );

    // compareTo must be older, exist, and belong to the VM.
    let other_snap = api.create(&other_id).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (compare, status, details) in [
        (
            s3_id.as_str(),
            StatusCode::BAD_REQUEST,
            "compareTo snapshot must be older than this snapshot",
        ),
        (other_snap.as_str(), StatusCode::CONFLICT, "VM id missmatch"),
        ("nope", StatusCode::INTERNAL_SERVER_ERROR, "not found"),
    ] {
        let (got, body) = api
            .get(&format!(
                "/api/v1/vms/{id}/snapshots/{s3_id}?compareTo={compare}"
            ))
            .await;
        assert_eq!(got, status, "{compare}");
        assert_eq!(error_body(&body).1, details);
    }
    let (got, _) = api
        .get(&format!(
            "/api/v1/vms/{id}/snapshots/{s1_id}?compareTo={s3_id}"
        ))
        .await;
    assert_eq!(got, StatusCode::BAD_REQUEST);

    // Listing: oldest first, chunks always squashed (even when asked not to).
    let order = vec![
        empty_id.clone(),
        s1_id.clone(),
        s2_id.clone(),
        s3_id.clone(),
    ];
    assert_eq!(s.snapshot_ids(&id), order);
    let list = api
        .json(
            Method::GET,
            &format!("/api/v1/vms/{id}/snapshots?squashChunks=false"),
        )
        .await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, order);
    assert_eq!(chunks(&list[1]["disks"][0]), squashed);
    assert_eq!(list[0]["disks"][0]["chunks"], json!([]));
    let vm = api.json(Method::GET, &format!("/api/v1/vms/{id}")).await;
    assert_eq!(vm["snapshots"], json!(order));

    // Deleting is idempotent and releases the snapshot.
    for _ in 0..2 {
        let (status, _, body) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/vms/{id}/snapshots/{s2_id}"),
            )
            .await;
        assert_eq!((status, body.len()), (StatusCode::OK, 0));
    }
    assert!(s.snapshot_disk_path(&id, &s2_id, &disk).is_none());
    let (status, body) = api
        .get(&format!(
            "/api/v1/vms/{id}/snapshots/{s3_id}?compareTo={s2_id}"
        ))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error_body(&body).1, "not found");
    let (status, _, _) = api
        .call(Method::DELETE, &format!("/api/v1/vms/{id}/snapshots"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(s.snapshot_ids(&id).is_empty());
    assert!(!s1_file.exists());
    assert_eq!(s.snapshot_ids(&other_id), vec![other_snap]);
}

#[tokio::test]
async fn extents_are_capped_and_cover_whole_clusters() {
    let size = 5 * 4096 + 100;
    let (vm, id, disk) = one_vm(size);
    let api = Api::start(
        OvmExporter::builder()
            .cluster_size(4096)
            .max_extent(2 * 4096 + 10)
            .vm(vm)
            .start()
            .await
            .unwrap(),
    )
    .await;
    api.server
        .write(&id, &disk, 0, &pattern(size as usize, 3))
        .unwrap();
    let snap = api.create(&id).await;
    let raw = chunks(&snap["disks"][0]);
    let p = raw[0].2;
    // The last extent covers the whole last cluster, past the end.
    assert_eq!(
        raw,
        vec![
            (0, 8192, p),
            (8192, 8192, p + 8192),
            (16384, 8192, p + 16384)
        ]
    );
    let squashed = api.snapshot(&id, snap["id"].as_str().unwrap(), "").await;
    assert_eq!(chunks(&squashed["disks"][0]), vec![(0, 24576, p)]);
    assert!(
        OvmExporter::builder()
            .cluster_size(1000)
            .start()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn disk_data_follows_serve_content() {
    let size = 3 * CS + 100;
    let (vm, id, disk) = one_vm(size);
    let other = VmSpec::new("other");
    let other_id = other.id.clone();
    let api = Api::start(
        OvmExporter::builder()
            .vm(vm)
            .vm(other)
            .start()
            .await
            .unwrap(),
    )
    .await;
    let content = pattern(size as usize, 9);
    api.server.write(&id, &disk, 0, &content).unwrap();
    let snap = api.create(&id).await["id"].as_str().unwrap().to_owned();
    // Later guest writes do not show in the snapshot's data.
    api.server.write(&id, &disk, 0, &[0u8; 100]).unwrap();
    let path = format!("/api/v1/vms/{id}/snapshots/{snap}/disks/{disk}");
    api.server.reset_stats();

    let (status, headers, body) = api.call(Method::HEAD, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], size.to_string());
    assert_eq!(headers[header::ACCEPT_RANGES], "bytes");
    assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    assert!(headers.get(header::ETAG).is_none());
    assert!(headers.get(header::LAST_MODIFIED).is_none());
    assert!(body.is_empty());

    let (status, body) = api.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, content);

    let ranged = |range: String| {
        let request = api.request(Method::GET, &path).header(header::RANGE, range);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            (status, headers, response.bytes().await.unwrap().to_vec())
        }
    };
    for (range, first, last) in [
        ("bytes=0-0".to_owned(), 0, 0),
        ("bytes=10-19".to_owned(), 10, 19),
        ("bytes=100-".to_owned(), 100, size - 1),
        ("bytes=-50".to_owned(), size - 50, size - 1),
        (format!("bytes=5-{}", size + 1000), 5, size - 1),
        ("bytes= 7 - 8 ".to_owned(), 7, 8),
        (format!("bytes={}-,0-0", size + 5), 0, 0),
    ] {
        let (status, headers, body) = ranged(range.clone()).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            headers[header::CONTENT_RANGE],
            format!("bytes {first}-{last}/{size}")
        );
        assert_eq!(
            headers[header::CONTENT_LENGTH],
            (last - first + 1).to_string()
        );
        assert_eq!(body, &content[first as usize..=last as usize], "{range}");
    }

    // Several ranges: multipart/byteranges, not merged, in request order.
    let (status, headers, body) = ranged("bytes=20-29,0-9,5-14".to_owned()).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    let ctype = headers[header::CONTENT_TYPE].to_str().unwrap().to_owned();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    assert_eq!(boundary.len(), 60);
    let mut expected = Vec::new();
    for (i, (a, b)) in [(20u64, 29u64), (0, 9), (5, 14)].into_iter().enumerate() {
        if i > 0 {
            expected.extend_from_slice(b"\r\n");
        }
        expected.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Range: bytes {a}-{b}/{size}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        expected.extend_from_slice(&content[a as usize..=b as usize]);
    }
    expected.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(body, expected);
    assert_eq!(headers[header::CONTENT_LENGTH], expected.len().to_string());
    assert!(headers.get(header::CONTENT_RANGE).is_none());

    // The ranges add up to more than the disk: the whole disk, 200.
    let (status, _, body) = ranged(format!("bytes=0-,{}-", size / 2)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, content);
    // If-Range never matches (no validators): 200, the whole disk.
    let response = api
        .request(Method::GET, &path)
        .header(header::RANGE, "bytes=0-9")
        .header(header::IF_RANGE, "\"anything\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().len() as u64, size);
    // If-Match: only * passes.
    let response = api
        .request(Method::GET, &path)
        .header(header::IF_MATCH, "\"etag\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    let response = api
        .request(Method::GET, &path)
        .header(header::IF_MATCH, "*")
        .header(header::RANGE, "bytes=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);

    // Unsatisfiable and malformed ranges: 416.
    let (status, headers, body) = ranged(format!("bytes={size}-")).await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers[header::CONTENT_RANGE], format!("bytes */{size}"));
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(body, b"invalid range: failed to overlap\n");
    for bad in ["bytes=9-5", "items=0-1", "bytes=x-", "bytes=0-1;2-3"] {
        let (status, headers, body) = ranged(bad.to_owned()).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
        assert!(headers.get(header::CONTENT_RANGE).is_none());
        assert_eq!(body, b"invalid range\n");
    }
    let stats = api.server.stats();
    assert_eq!(stats.data_requests, 19);
    assert_eq!(stats.by_route["DiskData"], 19);

    // Unknown disk: 404, empty body. Unknown snapshot: 500 JSON; another
    // VM's: 409.
    let (status, headers, body) = api
        .call(
            Method::GET,
            &format!("/api/v1/vms/{id}/snapshots/{snap}/disks/xvda"),
        )
        .await;
    assert_eq!((status, body.len()), (StatusCode::NOT_FOUND, 0));
    assert!(headers.get(header::CONTENT_TYPE).is_none());
    let (status, body) = api
        .get(&format!("/api/v1/vms/{id}/snapshots/nope/disks/{disk}"))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error_body(&body),
        ("Server error".into(), "not found".into())
    );
    let (status, body) = api
        .get(&format!(
            "/api/v1/vms/{other_id}/snapshots/{snap}/disks/{disk}"
        ))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_body(&body).1, "VM id missmatch");
    // The snapshot file removed out of band: 500, empty body.
    std::fs::remove_file(api.server.snapshot_disk_path(&id, &snap, &disk).unwrap()).unwrap();
    let (status, body) = api.get(&path).await;
    assert_eq!((status, body.len()), (StatusCode::INTERNAL_SERVER_ERROR, 0));
    // ... and deleting it now fails like os.Remove.
    let (status, _, body) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/vms/{id}/snapshots/{snap}"),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error_body(&body).1.ends_with("no such file or directory"));
}

#[tokio::test]
async fn fault_switches() {
    let size = 2 * MIB;
    let (vm, id, disk) = one_vm(size);
    let api = Api::start(OvmExporter::builder().vm(vm).start().await.unwrap()).await;
    let content = pattern(size as usize, 5);
    api.server.write(&id, &disk, 0, &content).unwrap();
    let snap = api.create(&id).await["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/vms/{id}/snapshots/{snap}/disks/{disk}");
    let faults = api.server.faults();
    let get_range = |range: &'static str| {
        let request = api.request(Method::GET, &path).header(header::RANGE, range);
        async move { request.send().await.unwrap() }
    };

    // Dropped mid-body: the headers and exactly `bytes` body bytes, then
    // the connection closes. Bodies no longer than `bytes` are not hit.
    faults.drop_data_after(100_000, 2);
    let response = get_range("bytes=0-99999").await;
    assert_eq!(response.bytes().await.unwrap().len(), 100_000);
    api.server.reset_stats();
    let response = get_range("bytes=0-").await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let mut response = response;
    let mut got = 0usize;
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => got += chunk.len(),
            Ok(None) => panic!("the body should have been cut"),
            Err(error) => break error,
        }
    };
    assert_eq!(got, 100_000, "{error}");
    assert_eq!(api.server.stats().data_bytes, 100_000);
    let response = api.request(Method::GET, &path).send().await.unwrap();
    assert!(response.bytes().await.is_err());
    let (status, body) = api.get(&path).await;
    assert_eq!((status, body.len() as u64), (StatusCode::OK, size));

    // Status faults: per route, before the token check, used up in order.
    faults.fail_status(503, 2, Route::DiskData);
    let (status, body) = api.get(&format!("/api/v1/vms/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    for _ in 0..2 {
        let response = api.client.get(api.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .starts_with("503 Service Unavailable")
        );
    }
    assert_eq!(
        get_range("bytes=0-9").await.status(),
        StatusCode::PARTIAL_CONTENT
    );
    faults.fail_status(500, 1, Route::Any);
    faults.fail_status(502, 1, Route::Login);
    let response = api.client.get(api.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let response = api
        .client
        .post(api.url("/api/v1/auth/login"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    api.login().await;

    // A broken proxy: 200 and the whole disk for a range.
    faults.ok_instead_of_partial(1);
    let response = get_range("bytes=10-19").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::CONTENT_RANGE).is_none());
    assert_eq!(response.bytes().await.unwrap(), content);
    assert_eq!(
        get_range("bytes=10-19").await.status(),
        StatusCode::PARTIAL_CONTENT
    );

    // A lost create response: the snapshot exists, the client saw nothing.
    faults.lose_create_response(1);
    let before = api.server.snapshot_ids(&id);
    let lost = api
        .request(Method::POST, &format!("/api/v1/vms/{id}/snapshots"))
        .send()
        .await;
    assert!(lost.is_err(), "{lost:?}");
    let after = api.server.snapshot_ids(&id);
    assert_eq!(after.len(), before.len() + 1);
    let list = api
        .json(Method::GET, &format!("/api/v1/vms/{id}/snapshots"))
        .await;
    assert_eq!(list.as_array().unwrap().len(), after.len());
    api.create(&id).await;

    // clear() switches everything off.
    faults.drop_data_after(0, 5);
    faults.fail_status(503, 5, Route::Any);
    faults.ok_instead_of_partial(5);
    faults.lose_create_response(5);
    faults.clear();
    assert_eq!(
        get_range("bytes=0-9").await.status(),
        StatusCode::PARTIAL_CONTENT
    );
    api.create(&id).await;
}

#[tokio::test]
async fn plain_http_keep_alive_counters_and_cleanup() {
    let (vm, id, _) = one_vm(MIB);
    let server = OvmExporter::builder()
        .tls(false)
        .vm(vm)
        .start()
        .await
        .unwrap();
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/api/v1/auth/login", server.endpoint()))
        .body(r#"{"username":"admin","password":"password"}"#)
        .send()
        .await
        .unwrap();
    let token: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        let response = client
            .get(format!("{}/api/v1/vms/{id}", server.endpoint()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap();
    }
    let stats = server.stats();
    assert_eq!(stats.connections, 1, "one keep-alive connection");
    assert_eq!(stats.requests, 11);
    assert_eq!(stats.logins, 1);
    assert_eq!(stats.by_route["GetVm"], 10);
    server.reset_stats();
    assert_eq!(server.stats(), Default::default());

    // A bad escape in the path is Go's plain 400.
    let mut tcp = std::net::TcpStream::connect(server.addr()).unwrap();
    tcp.write_all(b"GET /api/v1/%zz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\n400 Bad Request"), "{out}");

    let dir = server.dir();
    let addr = server.addr();
    assert!(dir.exists());
    drop(server);
    assert!(!dir.exists());
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// What one connection gets for a 256 MiB range (run by hand:
/// `cargo test -p hypersdk-testkit --release --test ovm_server -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement, run by hand"]
async fn throughput_one_connection_256_mib() {
    let size = 256 * MIB;
    let (vm, id, disk) = one_vm(size);
    let api = Api::start(OvmExporter::builder().vm(vm).start().await.unwrap()).await;
    let piece = pattern(8 * MIB as usize, 1);
    for offset in (0..size).step_by(piece.len()) {
        api.server.write(&id, &disk, offset, &piece).unwrap();
    }
    let started = std::time::Instant::now();
    let snap = api.create(&id).await["id"].as_str().unwrap().to_owned();
    println!(
        "snapshot of 256 MiB allocated: {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let path = format!("/api/v1/vms/{id}/snapshots/{snap}/disks/{disk}");
    for round in 0..3 {
        let started = std::time::Instant::now();
        let mut response = api
            .request(Method::GET, &path)
            .header(header::RANGE, format!("bytes=0-{}", size - 1))
            .send()
            .await
            .unwrap();
        let mut got = 0u64;
        while let Some(chunk) = response.chunk().await.unwrap() {
            got += chunk.len() as u64;
        }
        assert_eq!(got, size);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "round {round}: 256 MiB over one TLS connection in {secs:.3} s = {:.0} MiB/s",
            256.0 / secs
        );
    }
    // Four connections in parallel, 64 MiB each.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for part in 0..4u64 {
        let request = api.request(Method::GET, &path).header(
            header::RANGE,
            format!("bytes={}-{}", part * 64 * MIB, (part + 1) * 64 * MIB - 1),
        );
        tasks.push(tokio::spawn(async move {
            let mut response = request.send().await.unwrap();
            let mut got = 0u64;
            while let Some(chunk) = response.chunk().await.unwrap() {
                got += chunk.len() as u64;
            }
            got
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, size);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "256 MiB over 4 parallel TLS connections in {secs:.3} s = {:.0} MiB/s ({} connections so far)",
        256.0 / secs,
        api.server.stats().connections
    );
}
