//! The driver: settings, the chosen backend and the in-flight guard, shared
//! by the Identity, Controller and Node services.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Response, Status};
use tracing::Instrument;

use crate::backend::cloudscale;
use crate::backend::elsewhere::Elsewhere;
use crate::backend::hostpath::HostPath;
use crate::backend::router::{Route, Router};
use crate::backend::{Backend, NodeBackend};
use crate::config::Settings;
use crate::error::CsiResult;
use crate::locks::InFlight;
use crate::metrics;

/// Backends this binary can serve.
pub const BACKENDS: &[&str] = &["hostpath", "cloudscale", "civo", "packet"];

pub struct Driver {
    pub settings: Settings,
    pub backend: Arc<dyn Backend>,
    pub node_backend: Arc<dyn NodeBackend>,
    pub locks: InFlight,
}

/// The controller and node halves of one backend.
type Halves = (Arc<dyn Backend>, Arc<dyn NodeBackend>);

/// Builds one backend by name. Hostpath volumes live on the node called
/// `node_id`.
async fn build(name: &str, settings: &Settings, node_id: &str) -> Result<Halves, String> {
    Ok(match name {
        "hostpath" => {
            let state_dir = settings.state_dir.clone();
            let node_id = node_id.to_string();
            let max = settings.max_volumes_per_node;
            let hostpath =
                tokio::task::spawn_blocking(move || HostPath::open(&state_dir, &node_id, max))
                    .await
                    .map_err(|e| e.to_string())??;
            let hostpath = Arc::new(hostpath);
            (hostpath.clone(), hostpath)
        }
        "cloudscale" => {
            // A cloudscale node is the server the metadata service names:
            // its UUID is the node ID the controller attaches volumes to.
            let identity = if settings.mode.serves_node() {
                let (uuid, zone) = cloudscale::node_identity(settings).await?;
                tracing::info!(node_id = %uuid, zone = %zone, "cloudscale server identity read from the metadata service");
                Some((uuid, zone))
            } else {
                None
            };
            let (backend, node) = cloudscale::open(settings, identity)?;
            (backend, node)
        }
        "civo" => crate::backend::civo::open(settings).await?,
        "packet" => crate::backend::packet::build(settings).await?,
        other => {
            return Err(format!(
                "unknown backend {other:?}; this binary serves: {}",
                BACKENDS.join(", ")
            ));
        }
    })
}

/// Stand-in halves of a backend whose node calls another node plugin serves.
fn elsewhere(name: &str) -> Result<Halves, String> {
    let name = BACKENDS.iter().find(|b| **b == name).ok_or_else(|| {
        format!(
            "unknown backend {name:?}; this binary serves: {}",
            BACKENDS.join(", ")
        )
    })?;
    let stand_in = Arc::new(Elsewhere::new(name));
    Ok((stand_in.clone(), stand_in))
}

impl Driver {
    /// Builds the driver for the configured backends (a router in front
    /// when there are several).
    ///
    /// The node has one ID for every backend: the first cloud backend's own
    /// (a server ID from its metadata service), else `--node-id`. Cloud
    /// backends are built first to learn it; hostpath then records its
    /// volumes on that node, so that ControllerPublish with the ID that
    /// NodeGetInfo reports reaches every backend. A node-only process
    /// builds only the backends of `node_backends`; the others stand
    /// `Elsewhere`, so that IDs still route by the full list.
    pub async fn new(settings: &Settings) -> Result<Self, String> {
        let mut settings = settings.clone();
        let mut built: Vec<Option<Halves>> = Vec::new();
        for name in &settings.backends {
            built.push(if !settings.node_backends.contains(name) {
                Some(elsewhere(name)?)
            } else if name == "hostpath" {
                None
            } else {
                Some(build(name, &settings, &settings.node_id).await?)
            });
        }
        if let Some(own) = built.iter().flatten().find_map(|(_, node)| node.node_id()) {
            settings.node_id = own;
        }
        let mut routes = Vec::new();
        for (name, halves) in settings.backends.iter().zip(built) {
            let (backend, node) = match halves {
                Some(halves) => halves,
                None => build(name, &settings, &settings.node_id).await?,
            };
            routes.push(Route { backend, node });
        }
        let (backend, node_backend): Halves = if routes.len() == 1 {
            let only = routes.remove(0);
            (only.backend, only.node)
        } else {
            let router = Arc::new(Router::new(routes)?);
            (router.clone(), router)
        };
        Ok(Driver {
            settings,
            backend,
            node_backend,
            locks: InFlight::default(),
        })
    }

    /// Ok when every served part can take requests.
    pub async fn ready(&self) -> CsiResult<()> {
        if self.settings.mode.serves_controller() {
            self.backend.ready().await?;
        }
        if self.settings.mode.serves_node() {
            self.node_backend.ready().await?;
        }
        Ok(())
    }

    /// Runs one RPC inside its span, logs its outcome and turns the result
    /// into a gRPC reply.
    pub(crate) async fn call<T>(
        &self,
        span: tracing::Span,
        work: impl Future<Output = CsiResult<T>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        // The adapters name each span after its CSI method; telemetry keeps
        // these spans enabled at any log level, so the name is always there.
        let method = span.metadata().map_or("unknown", |m| m.name());
        let timer = metrics::rpc_started(method);
        let result = work.instrument(span.clone()).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(elapsed_ms, "ok"),
            Err(e) => tracing::warn!(elapsed_ms, code = ?e.code(), error = %e, "failed"),
        });
        timer.finish(
            result
                .as_ref()
                .map_or_else(|e| e.code(), |_| tonic::Code::Ok),
        );
        result.map(Response::new).map_err(Status::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Map;
    use crate::backend::hostpath::TOPOLOGY_KEY;
    use crate::config::{Mode, ServeArgs};
    use crate::error::CsiError;

    /// A node of a cloudscale + hostpath driver that serves hostpath only
    /// starts without cloudscale's metadata service, reports hostpath's
    /// topology alone, and refuses to stage a cloudscale volume.
    #[tokio::test]
    async fn a_node_serves_only_its_node_backends() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::resolve(ServeArgs {
            endpoint: Some("unix:///tmp/unused.sock".into()),
            node_id: Some("n1".into()),
            mode: Some(Mode::Node),
            state_dir: Some(dir.path().to_path_buf()),
            backends: Some(vec!["cloudscale".into(), "hostpath".into()]),
            node_backends: Some(vec!["hostpath".into()]),
            ..Default::default()
        })
        .unwrap();
        let driver = Driver::new(&settings).await.unwrap();
        let node = driver.node_backend;
        assert_eq!(
            node.topology(),
            Map::from([(TOPOLOGY_KEY.to_string(), "n1".to_string())])
        );
        let volume = "4f6e4e8a-0000-4000-8000-000000000001";
        match node.attach_device(volume, &Map::new()).await {
            Err(CsiError::FailedPrecondition(m)) => assert!(m.contains("cloudscale"), "{m}"),
            other => panic!("attach of a cloudscale volume: {other:?}"),
        }
        assert_eq!(node.find_device(volume).await.unwrap(), None);
        node.detach_device(volume).await.unwrap();
        node.ready().await.unwrap();
    }
}
