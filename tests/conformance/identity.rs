//! Identity service: GetPluginInfo, GetPluginCapabilities, Probe.

use multicsi::csi;
use multicsi::csi::plugin_capability::service::Type as PluginService;

use crate::api::ok;
use crate::harness::{BackendUnderTest, Server};

/// GetPluginInfo: a name in the spec's format (at most 63 characters,
/// domain-like) and a vendor version.
pub async fn plugin_info_names_the_driver(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    for _ in 0..3 {
        let info = ok(
            "GetPluginInfo",
            s.identity()
                .get_plugin_info(csi::GetPluginInfoRequest {})
                .await,
        );
        assert!(!info.name.is_empty(), "name is required");
        assert!(info.name.len() <= 63, "name longer than 63: {}", info.name);
        assert!(
            info.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "name {:?} has characters outside [a-z0-9.-]",
            info.name
        );
        assert!(
            info.name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && info.name.ends_with(|c: char| c.is_ascii_alphanumeric()),
            "name {:?} must begin and end with an alphanumeric character",
            info.name
        );
        assert!(
            !info.vendor_version.is_empty(),
            "vendor_version is required"
        );
    }
}

/// GetPluginCapabilities lists the controller service and the expected
/// constraints; every advertised capability is a known one.
pub async fn plugin_capabilities_are_advertised(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    let reply = ok(
        "GetPluginCapabilities",
        s.identity()
            .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await,
    );
    assert!(!reply.capabilities.is_empty(), "no capabilities advertised");
    for cap in &reply.capabilities {
        match &cap.r#type {
            Some(csi::plugin_capability::Type::Service(service)) => assert!(
                PluginService::try_from(service.r#type).is_ok_and(|t| t != PluginService::Unknown),
                "unknown service capability {}",
                service.r#type
            ),
            Some(csi::plugin_capability::Type::VolumeExpansion(e)) => {
                assert!(e.r#type != 0, "volume expansion capability of type UNKNOWN")
            }
            None => panic!("capability without a type"),
        }
    }
    let adv = s.advertised().await;
    // A plugin with the controller service answers ControllerGetCapabilities.
    assert!(adv.plugin(PluginService::ControllerService));
    assert!(
        !adv.controller.is_empty(),
        "the controller service advertises no capability"
    );
    if b.controller_rpcs
        .contains(&csi::controller_service_capability::rpc::Type::ExpandVolume)
    {
        // ONLINE where volumes grow in use, OFFLINE where they grow only
        // detached (Civo); one of them must be there.
        let expansion = reply.capabilities.iter().any(|c| {
            matches!(
                c.r#type,
                Some(csi::plugin_capability::Type::VolumeExpansion(_))
            )
        });
        assert!(
            expansion,
            "EXPAND_VOLUME is advertised without a volume-expansion plugin capability"
        );
    }
}

/// Probe answers, and when it says whether it is ready, it is ready.
pub async fn probe_reports_ready(b: BackendUnderTest) {
    let s = Server::start(&b).await;
    for _ in 0..3 {
        let probe = ok("Probe", s.identity().probe(csi::ProbeRequest {}).await);
        assert_ne!(
            probe.ready,
            Some(false),
            "a healthy plugin reported not ready"
        );
    }
}
