//! The Identity service.

use tonic::{Request, Response, Status};

use crate::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, PluginCapability, ProbeRequest, ProbeResponse, identity_server,
    plugin_capability,
};
use crate::driver::Driver;

#[tonic::async_trait]
impl identity_server::Identity for Driver {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        let span = tracing::debug_span!("GetPluginInfo");
        self.call(span, async {
            Ok(GetPluginInfoResponse {
                name: self.settings.driver_name.clone(),
                vendor_version: env!("CARGO_PKG_VERSION").to_string(),
                manifest: [("backend".to_string(), self.backend.name().to_string())].into(),
            })
        })
        .await
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let span = tracing::debug_span!("GetPluginCapabilities");
        self.call(span, async { Ok(self.plugin_capabilities()) })
            .await
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        let span = tracing::debug_span!("Probe");
        self.call(span, async {
            // The same check as the metrics listener's /readyz.
            let ready = self.ready().await;
            if let Err(e) = &ready {
                tracing::warn!(error = %e, "not ready");
            }
            Ok(ProbeResponse {
                ready: Some(ready.is_ok()),
            })
        })
        .await
    }
}

impl Driver {
    /// Whether the GroupController service is served: by a controller
    /// whose backend takes group snapshots.
    pub fn serves_group_controller(&self) -> bool {
        self.settings.mode.serves_controller() && self.backend.group_snapshots()
    }

    /// The SnapshotMetadata service runs beside the controller, for a
    /// backend that computes block metadata.
    pub fn serves_snapshot_metadata(&self) -> bool {
        self.settings.mode.serves_controller() && self.backend.snapshot_metadata()
    }

    fn plugin_capabilities(&self) -> GetPluginCapabilitiesResponse {
        use plugin_capability::service::Type as Service;
        use plugin_capability::volume_expansion::Type as Expansion;
        let mut capabilities = Vec::new();
        let service = |t: Service| PluginCapability {
            r#type: Some(plugin_capability::Type::Service(
                plugin_capability::Service { r#type: t as i32 },
            )),
        };
        if self.settings.mode.serves_controller() {
            capabilities.push(service(Service::ControllerService));
        }
        if self.serves_group_controller() {
            capabilities.push(service(Service::GroupControllerService));
        }
        capabilities.push(service(Service::VolumeAccessibilityConstraints));
        if self.serves_snapshot_metadata() {
            capabilities.push(service(Service::SnapshotMetadataService));
        }
        if self.backend.features().expand {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: if self.backend.online_expansion() {
                            Expansion::Online as i32
                        } else {
                            Expansion::Offline as i32
                        },
                    },
                )),
            });
        }
        GetPluginCapabilitiesResponse { capabilities }
    }
}
