//! Property collector reads: `RetrievePropertiesEx` and its paging.
//!
//! [`retrieve`] asks for at most the client's page size of objects per
//! round trip (`maxObjects`) and follows the `token` with
//! `ContinueRetrievePropertiesEx` until the server has no more; one round
//! trip per page, never one per object. A failure in the middle cancels
//! the rest with `CancelRetrievePropertiesEx` (best effort); a transient
//! one then starts the read over from the first page.
//!
//! ```no_run
//! # async fn demo(client: &hypersdk_vsphere::Client) -> hypersdk_core::Result<()> {
//! use hypersdk_vsphere::property::retrieve_one;
//! use hypersdk_vsphere::types::MoRef;
//!
//! let vm = MoRef::new("VirtualMachine", "vm-42");
//! let props = retrieve_one(client, &vm, &["name", "runtime.powerState"]).await?;
//! println!("{:?}", props.text("name"));
//! # Ok(()) }
//! ```

use hypersdk_core::retry::retry;
use hypersdk_core::{Error, Result};

use crate::client::Client;
use crate::soap::Request;
use crate::types::{
    MoRef, ObjectContent, ObjectSpec, PropertyFilterSpec, PropertySpec, RetrieveResult,
};

/// Every object `spec` selects, page by page.
///
/// A transient failure (network, HTTP 5xx) on a later page cancels the
/// rest (best effort) and starts over from the first page, under the
/// client's retry [`Backoff`](hypersdk_core::retry::Backoff): a paging
/// token is valid once, so a page is never asked for twice. When the
/// session was renewed between pages, the old session's token is not sent
/// on the new one: the read fails with [`Error::Unauthenticated`] and the
/// caller starts over (objects such as a `ContainerView` belonged to the
/// old session too; [`crate::inventory::discover_vms`] does this).
///
/// # Errors
///
/// The mapped fault or transport error of any page.
pub async fn retrieve(client: &Client, spec: &PropertyFilterSpec) -> Result<Vec<ObjectContent>> {
    let pc = &client.service_content().property_collector;
    let mut req = Request::new("RetrievePropertiesEx", pc);
    spec.write(&mut req, "specSet");
    req.start("options")
        .int("maxObjects", i64::from(client.page_size()))
        .end();
    retry(client.backoff(), "paged RetrievePropertiesEx", |attempt| {
        if attempt > 1 {
            tracing::info!(
                attempt,
                "vSphere paged property read: starting over from page 1"
            );
        }
        retrieve_pages(client, pc, &req)
    })
    .await
}

/// One pass over all pages.
async fn retrieve_pages(
    client: &Client,
    pc: &MoRef,
    first: &Request,
) -> Result<Vec<ObjectContent>> {
    let resp = client.invoke_idempotent(first).await?;
    // The session the token belongs to.
    let generation = client.session_generation();
    let mut page = RetrieveResult::from_response(resp);
    let mut out = std::mem::take(&mut page.objects);
    let mut pages = 1u32;
    while let Some(token) = page.token.take() {
        if client.session_generation() != generation {
            return Err(Error::Unauthenticated {
                object: format!(
                    "{} (paged property read: the session was renewed between pages; \
                     the paging token belonged to the old session)",
                    client.url()
                ),
                source: None,
            });
        }
        let mut req = Request::new("ContinueRetrievePropertiesEx", pc);
        req.text("token", &token);
        // A token is valid once: this call is never repeated.
        let resp = match client.invoke_session_bound(&req).await {
            Ok(r) => r,
            Err(e) => {
                if client.session_generation() == generation {
                    cancel(client, pc, &token).await;
                }
                return Err(e);
            }
        };
        page = RetrieveResult::from_response(resp);
        out.append(&mut page.objects);
        pages += 1;
    }
    tracing::debug!(objects = out.len(), pages, "vSphere properties retrieved");
    Ok(out)
}

async fn cancel(client: &Client, pc: &MoRef, token: &str) {
    let mut req = Request::new("CancelRetrievePropertiesEx", pc);
    req.text("token", token);
    if let Err(e) = client.invoke_session_bound(&req).await {
        tracing::debug!(error = %e, "CancelRetrievePropertiesEx failed");
    }
}

/// The properties `paths` of one object.
///
/// # Errors
///
/// [`Error::NotFound`] when the object does not exist, else the mapped
/// fault or transport error.
pub async fn retrieve_one(client: &Client, obj: &MoRef, paths: &[&str]) -> Result<ObjectContent> {
    let spec = PropertyFilterSpec::new(
        vec![PropertySpec::new(&obj.kind, paths.iter().copied())],
        vec![ObjectSpec::new(obj.clone())],
    );
    let objects = retrieve(client, &spec).await?;
    objects
        .into_iter()
        .find(|o| o.obj == *obj)
        .ok_or_else(|| Error::not_found(obj.to_string()))
}
