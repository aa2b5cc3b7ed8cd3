//! The conformance suite against [`MemoryProvider`], as every provider runs it.

use std::sync::Arc;

use hypersdk_core::memory::MemoryProvider;
use hypersdk_core::model::VmRef;
use hypersdk_core::provider::{Capabilities, Capability, Provider};
use hypersdk_testkit::conformance::{self, Fixture};

fn fixture(p: &MemoryProvider) -> Fixture {
    Fixture::new(VmRef::name("web01")).with_writer(Arc::new(p.clone()))
}

#[tokio::test]
async fn memory_provider_passes_the_suite() {
    let p = MemoryProvider::with_demo_vms();
    conformance::run_all(&p, &fixture(&p)).await;
}

#[tokio::test]
async fn through_arc_dyn_provider() {
    let p = MemoryProvider::with_demo_vms();
    let fx = fixture(&p);
    let dynp: Arc<dyn Provider> = Arc::new(p);
    conformance::run_all(dynp.as_ref(), &fx).await;
}

#[tokio::test]
async fn restricted_provider_reports_unsupported() {
    // Each capability taken away in turn: the suite must still pass, now
    // checking that the missing operation answers Unsupported.
    for missing in Capability::ALL {
        let caps: Capabilities = Capability::ALL
            .into_iter()
            .filter(|c| *c != missing)
            .collect();
        let p = MemoryProvider::with_demo_vms().with_capabilities(caps);
        conformance::run_all(&p, &fixture(&p)).await;
    }
}

#[tokio::test]
async fn discover_only_provider() {
    let p = MemoryProvider::with_demo_vms()
        .with_capabilities(Capabilities::none().with(Capability::Discover));
    conformance::run_all(&p, &Fixture::new(VmRef::name("db01"))).await;
}
