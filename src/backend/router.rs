//! Several backends in one driver. The first is the default: its volume and
//! snapshot IDs keep their own format (so volumes made by a provider's own
//! driver are adopted unchanged); the IDs of every other backend carry its
//! name and `:` in front (`hostpath:hp-...`). Every call is routed by the
//! ID alone; CreateVolume and GetCapacity by the StorageClass parameter
//! `multicsi.io/backend` (absent = the default).
//!
//! Capabilities the backends do not share are advertised only when every
//! backend that has the feature at all has them (online expansion,
//! read-only publish): a CO never asks one backend for what only another
//! can do. The backends still refuse such a request per volume.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::blocks::ExtentStream;
use super::{
    Backend, Capacity, ContentSource, CreateVolume, Features, GroupSnapshot, Map, NodeBackend,
    Recorded, Snapshot, Volume, VolumeStatus,
};
use crate::csi::params::BACKEND;
use crate::error::{CsiError, CsiResult};

/// Between a backend's name and its own ID.
pub const SEPARATOR: char = ':';

/// One served backend: its controller and node halves.
#[derive(Clone)]
pub struct Route {
    pub backend: Arc<dyn Backend>,
    pub node: Arc<dyn NodeBackend>,
}

/// Routes calls to the backend an ID or a StorageClass names.
pub struct Router {
    routes: Vec<Route>,
    keys: &'static [&'static str],
}

impl Router {
    /// `routes[0]` is the default backend. Names must be distinct.
    pub fn new(routes: Vec<Route>) -> Result<Self, String> {
        if routes.is_empty() {
            return Err("no backend to route to".into());
        }
        let mut keys: Vec<&'static str> = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = route.backend.name();
            if routes[..i].iter().any(|r| r.backend.name() == name) {
                return Err(format!("backend {name:?} is configured twice"));
            }
            for key in route.backend.parameter_keys() {
                if !keys.contains(key) {
                    keys.push(key);
                }
            }
        }
        // Built once per process: the union of every backend's keys.
        let keys: &'static [&'static str] = Box::leak(keys.into_boxed_slice());
        Ok(Router { routes, keys })
    }

    fn default(&self) -> &Route {
        &self.routes[0]
    }

    /// The route of an ID and the backend's own ID.
    fn route<'a>(&self, id: &'a str) -> (usize, &'a str) {
        for (i, route) in self.routes.iter().enumerate().skip(1) {
            if let Some(own) = id
                .strip_prefix(route.backend.name())
                .and_then(|rest| rest.strip_prefix(SEPARATOR))
            {
                return (i, own);
            }
        }
        (0, id)
    }

    fn outward(&self, index: usize, id: &str) -> String {
        if index == 0 {
            id.to_string()
        } else {
            format!("{}{SEPARATOR}{id}", self.routes[index].backend.name())
        }
    }

    fn backend(&self, index: usize) -> &dyn Backend {
        self.routes[index].backend.as_ref()
    }

    fn node(&self, index: usize) -> &dyn NodeBackend {
        self.routes[index].node.as_ref()
    }

    fn outward_source(&self, index: usize, source: Option<ContentSource>) -> Option<ContentSource> {
        source.map(|s| match s {
            ContentSource::Snapshot(id) => ContentSource::Snapshot(self.outward(index, &id)),
            ContentSource::Volume(id) => ContentSource::Volume(self.outward(index, &id)),
        })
    }

    fn outward_volume(&self, index: usize, mut volume: Volume) -> Volume {
        volume.id = self.outward(index, &volume.id);
        volume.source = self.outward_source(index, volume.source.take());
        volume
    }

    fn outward_status(&self, index: usize, mut status: VolumeStatus) -> VolumeStatus {
        status.volume = self.outward_volume(index, status.volume);
        status
    }

    fn outward_snapshot(&self, index: usize, mut snapshot: Snapshot) -> Snapshot {
        snapshot.id = self.outward(index, &snapshot.id);
        snapshot.source_volume_id = self.outward(index, &snapshot.source_volume_id);
        snapshot.group_snapshot_id = snapshot
            .group_snapshot_id
            .map(|id| self.outward(index, &id));
        snapshot
    }

    fn outward_group(&self, index: usize, mut group: GroupSnapshot) -> GroupSnapshot {
        group.id = self.outward(index, &group.id);
        group.snapshots = group
            .snapshots
            .into_iter()
            .map(|s| self.outward_snapshot(index, s))
            .collect();
        group
    }

    /// The backend of a group snapshot's IDs and their own IDs there: every
    /// ID must belong to that one backend.
    fn route_all(&self, ids: &[String], what: &str) -> CsiResult<(usize, Vec<String>)> {
        let mut index = None;
        let mut own = Vec::with_capacity(ids.len());
        for id in ids {
            let (i, id_there) = self.route(id);
            if index.is_some_and(|first| first != i) {
                return Err(CsiError::FailedPrecondition(format!(
                    "{what} belong to several backends ({} and {}); a group snapshot takes the volumes of one backend only",
                    self.backend(index.unwrap_or(0)).name(),
                    self.backend(i).name()
                )));
            }
            index = Some(i);
            own.push(id_there.to_string());
        }
        Ok((index.unwrap_or(0), own))
    }

    /// The own IDs of a group snapshot's members on backend `index`; a
    /// snapshot of another backend is no member (INVALID_ARGUMENT).
    fn members_of(&self, index: usize, snapshot_ids: &[String]) -> CsiResult<Vec<String>> {
        snapshot_ids
            .iter()
            .map(|id| match self.route(id) {
                (i, own) if i == index => Ok(own.to_string()),
                _ => Err(CsiError::InvalidArgument(format!(
                    "snapshot {id} is not of the {} backend, so no member of this group snapshot; list the group's own snapshot_ids",
                    self.backend(index).name()
                ))),
            })
            .collect()
    }

    /// The backends that take group snapshots.
    fn group_backends(&self) -> Vec<&'static str> {
        self.routes
            .iter()
            .filter(|r| r.backend.group_snapshots())
            .map(|r| r.backend.name())
            .collect()
    }

    fn by_name(&self, name: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.backend.name() == name)
    }

    /// The backend StorageClass parameters select (`multicsi.io/backend`,
    /// absent = the default).
    fn selected(&self, parameters: &Map) -> CsiResult<usize> {
        match parameters.get(BACKEND) {
            None => Ok(0),
            Some(name) => self.by_name(name).ok_or_else(|| {
                CsiError::InvalidArgument(format!(
                    "parameter {BACKEND}={name:?}: this driver serves {}",
                    self.backend_names().join(", ")
                ))
            }),
        }
    }
}

#[async_trait]
impl Backend for Router {
    fn name(&self) -> &'static str {
        self.default().backend.name()
    }

    fn features(&self) -> Features {
        let mut all = Features::default();
        for route in &self.routes {
            let f = route.backend.features();
            all.snapshots |= f.snapshots;
            all.clone |= f.clone;
            all.expand |= f.expand;
            all.capacity |= f.capacity;
            all.attach |= f.attach;
            all.volume_condition |= f.volume_condition;
        }
        all
    }

    fn parameter_keys(&self) -> &'static [&'static str] {
        self.keys
    }

    /// Online only when every backend that expands does so online.
    fn online_expansion(&self) -> bool {
        self.routes.iter().all(|r| {
            let backend = &r.backend;
            !backend.features().expand || backend.online_expansion()
        })
    }

    /// Read-only publish only when every backend that attaches offers it.
    fn publish_readonly(&self) -> bool {
        self.routes.iter().all(|r| {
            let backend = &r.backend;
            !backend.features().attach || backend.publish_readonly()
        })
    }

    fn backend_names(&self) -> Vec<&'static str> {
        self.routes.iter().map(|r| r.backend.name()).collect()
    }

    fn backend_of(&self, id: &str) -> &'static str {
        self.backend(self.route(id).0).name()
    }

    async fn ready(&self) -> CsiResult<()> {
        for route in &self.routes {
            route.backend.ready().await?;
        }
        Ok(())
    }

    async fn create_volume(&self, request: &CreateVolume) -> CsiResult<Volume> {
        let mut request = request.clone();
        let index = self.selected(&request.parameters)?;
        request.parameters.remove(BACKEND);
        let backend = self.backend(index);
        if let Some(key) = request
            .parameters
            .keys()
            .find(|k| !backend.parameter_keys().contains(&k.as_str()))
        {
            return Err(CsiError::InvalidArgument(format!(
                "parameter {key:?} does not apply to the {} backend",
                backend.name()
            )));
        }
        if let Some(source) = &request.source {
            let (id, rebuild): (&str, fn(String) -> ContentSource) = match source {
                ContentSource::Snapshot(id) => (id, ContentSource::Snapshot),
                ContentSource::Volume(id) => (id, ContentSource::Volume),
            };
            let (source_index, own) = self.route(id);
            if source_index != index {
                return Err(CsiError::InvalidArgument(format!(
                    "content source {id} belongs to the {} backend, the volume to the {} backend; a volume can only be made from a source of its own backend",
                    self.backend(source_index).name(),
                    backend.name()
                )));
            }
            let features = backend.features();
            let supported = match source {
                ContentSource::Snapshot(_) => features.snapshots,
                ContentSource::Volume(_) => features.clone,
            };
            if !supported {
                return Err(CsiError::Unimplemented(format!(
                    "the {} backend cannot make a volume from this kind of content source",
                    backend.name()
                )));
            }
            request.source = Some(rebuild(own.to_string()));
        }
        let volume = backend.create_volume(&request).await?;
        Ok(self.outward_volume(index, volume))
    }

    async fn delete_volume(&self, id: &str) -> CsiResult<()> {
        let (index, own) = self.route(id);
        self.backend(index).delete_volume(own).await
    }

    async fn get_volume(&self, id: &str) -> CsiResult<VolumeStatus> {
        let (index, own) = self.route(id);
        let status = self.backend(index).get_volume(own).await?;
        Ok(self.outward_status(index, status))
    }

    async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>> {
        let mut all = Vec::new();
        for index in 0..self.routes.len() {
            for status in self.backend(index).list_volumes().await? {
                all.push(self.outward_status(index, status));
            }
        }
        all.sort_by(|a, b| a.volume.id.cmp(&b.volume.id));
        Ok(all)
    }

    async fn publish(&self, id: &str, node_id: &str, read_only: bool) -> CsiResult<Map> {
        let (index, own) = self.route(id);
        let backend = self.backend(index);
        if !backend.features().attach {
            return Ok(Map::new());
        }
        backend.publish(own, node_id, read_only).await
    }

    async fn unpublish(&self, id: &str, node_id: Option<&str>) -> CsiResult<()> {
        let (index, own) = self.route(id);
        let backend = self.backend(index);
        if !backend.features().attach {
            return Ok(());
        }
        backend.unpublish(own, node_id).await
    }

    async fn expand(&self, id: &str, required_bytes: u64, limit_bytes: u64) -> CsiResult<u64> {
        let (index, own) = self.route(id);
        let backend = self.backend(index);
        if !backend.features().expand {
            return Err(CsiError::Unimplemented(format!(
                "the {} backend cannot expand volumes",
                backend.name()
            )));
        }
        backend.expand(own, required_bytes, limit_bytes).await
    }

    /// The default backend's capacity.
    async fn capacity(&self) -> CsiResult<Capacity> {
        self.capacity_for(&Map::new()).await
    }

    async fn capacity_for(&self, parameters: &Map) -> CsiResult<Capacity> {
        let backend = self.backend(self.selected(parameters)?);
        if !backend.features().capacity {
            return Err(CsiError::Unimplemented(format!(
                "the {} backend reports no free capacity; do not enable storage capacity tracking for its StorageClasses",
                backend.name()
            )));
        }
        backend.capacity().await
    }

    async fn create_snapshot(&self, source_volume_id: &str, name: &str) -> CsiResult<Snapshot> {
        let (index, own) = self.route(source_volume_id);
        let backend = self.backend(index);
        if !backend.features().snapshots {
            return Err(CsiError::Unimplemented(format!(
                "the {} backend cannot take snapshots",
                backend.name()
            )));
        }
        let snapshot = backend.create_snapshot(own, name).await?;
        Ok(self.outward_snapshot(index, snapshot))
    }

    async fn delete_snapshot(&self, id: &str) -> CsiResult<()> {
        let (index, own) = self.route(id);
        let backend = self.backend(index);
        if !backend.features().snapshots {
            return Ok(());
        }
        backend.delete_snapshot(own).await
    }

    async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>> {
        let mut all = Vec::new();
        for index in 0..self.routes.len() {
            if !self.backend(index).features().snapshots {
                continue;
            }
            for snapshot in self.backend(index).list_snapshots().await? {
                all.push(self.outward_snapshot(index, snapshot));
            }
        }
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    /// Advertised when any backend takes group snapshots; a request for
    /// volumes of a backend that does not, or of several backends, is
    /// refused (FAILED_PRECONDITION).
    fn group_snapshots(&self) -> bool {
        self.routes.iter().any(|r| r.backend.group_snapshots())
    }

    async fn create_group_snapshot(
        &self,
        name: &str,
        source_volume_ids: &[String],
    ) -> CsiResult<GroupSnapshot> {
        let (index, own) = self.route_all(source_volume_ids, "the source volumes")?;
        let backend = self.backend(index);
        if !backend.group_snapshots() {
            return Err(CsiError::FailedPrecondition(format!(
                "the source volumes are {} volumes, and the {} backend takes no group snapshots (its provider offers no point in time across volumes); group snapshots are taken of {} volumes",
                backend.name(),
                backend.name(),
                self.group_backends().join(", ")
            )));
        }
        let group = backend.create_group_snapshot(name, &own).await?;
        Ok(self.outward_group(index, group))
    }

    async fn delete_group_snapshot(&self, id: &str, snapshot_ids: &[String]) -> CsiResult<()> {
        let (index, own) = self.route(id);
        let backend = self.backend(index);
        if !backend.group_snapshots() {
            return Ok(());
        }
        let own_members = self.members_of(index, snapshot_ids)?;
        backend.delete_group_snapshot(own, &own_members).await
    }

    async fn get_group_snapshot(
        &self,
        id: &str,
        snapshot_ids: &[String],
    ) -> CsiResult<GroupSnapshot> {
        let (index, own) = self.route(id);
        let backend = self.backend(index);
        if !backend.group_snapshots() {
            return Err(CsiError::NotFound(format!(
                "group snapshot {id} does not exist (the {} backend takes no group snapshots)",
                backend.name()
            )));
        }
        let own_members = self.members_of(index, snapshot_ids)?;
        let group = backend.get_group_snapshot(own, &own_members).await?;
        Ok(self.outward_group(index, group))
    }

    /// Offered when any backend offers it; the others answer
    /// FAILED_PRECONDITION for their snapshots.
    fn snapshot_metadata(&self) -> bool {
        self.routes.iter().any(|r| r.backend.snapshot_metadata())
    }

    async fn allocated_extents(&self, snapshot_id: &str, from: u64) -> CsiResult<ExtentStream> {
        let (index, own) = self.route(snapshot_id);
        self.backend(index).allocated_extents(own, from).await
    }

    async fn changed_extents(
        &self,
        base_snapshot_id: &str,
        target_snapshot_id: &str,
        from: u64,
    ) -> CsiResult<ExtentStream> {
        let (index, base) = self.route(base_snapshot_id);
        let (target_index, target) = self.route(target_snapshot_id);
        if index != target_index {
            return Err(CsiError::InvalidArgument(format!(
                "base snapshot {base_snapshot_id} and target snapshot {target_snapshot_id} belong to different backends: a delta is between two snapshots of one volume"
            )));
        }
        self.backend(index)
            .changed_extents(base, target, from)
            .await
    }
}

#[async_trait]
impl NodeBackend for Router {
    /// Every backend's segments: a volume's topology names one backend's
    /// keys, and this node offers all of them.
    fn topology(&self) -> Map {
        let mut all = Map::new();
        for route in &self.routes {
            all.extend(route.node.topology());
        }
        all
    }

    /// The smallest limit: kubelet counts the volumes of every backend.
    fn max_volumes(&self) -> u64 {
        self.routes
            .iter()
            .map(|r| r.node.max_volumes())
            .filter(|n| *n > 0)
            .min()
            .unwrap_or(0)
    }

    async fn ready(&self) -> CsiResult<()> {
        for route in &self.routes {
            route.node.ready().await?;
        }
        Ok(())
    }

    /// Expansion is offered when any backend grows volumes; a volume of
    /// one that does not is refused by that backend.
    fn expands(&self) -> bool {
        self.routes.iter().any(|r| r.node.expands())
    }

    async fn attach_device(&self, volume_id: &str, publish_context: &Map) -> CsiResult<PathBuf> {
        let (index, own) = self.route(volume_id);
        self.node(index).attach_device(own, publish_context).await
    }

    async fn find_device(&self, volume_id: &str) -> CsiResult<Option<PathBuf>> {
        let (index, own) = self.route(volume_id);
        self.node(index).find_device(own).await
    }

    async fn detach_device(&self, volume_id: &str) -> CsiResult<()> {
        let (index, own) = self.route(volume_id);
        self.node(index).detach_device(own).await
    }

    async fn refresh_device(&self, volume_id: &str) -> CsiResult<u64> {
        let (index, own) = self.route(volume_id);
        self.node(index).refresh_device(own).await
    }

    async fn recorded(&self, volume_id: &str) -> CsiResult<Option<Recorded>> {
        let (index, own) = self.route(volume_id);
        self.node(index).recorded(own).await
    }

    async fn backing_condition(&self, volume_id: &str) -> CsiResult<Option<String>> {
        let (index, own) = self.route(volume_id);
        self.node(index).backing_condition(own).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    /// An in-memory backend that records the IDs it was called with.
    struct Fake {
        name: &'static str,
        keys: &'static [&'static str],
        features: Features,
        volumes: Mutex<BTreeMap<String, Volume>>,
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn new(name: &'static str, keys: &'static [&'static str], snapshots: bool) -> Arc<Self> {
            Arc::new(Fake {
                name,
                keys,
                features: Features {
                    snapshots,
                    attach: true,
                    expand: true,
                    ..Features::default()
                },
                volumes: Mutex::new(BTreeMap::new()),
                calls: Mutex::new(Vec::new()),
            })
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }
    }

    #[async_trait]
    impl Backend for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn features(&self) -> Features {
            self.features
        }
        fn parameter_keys(&self) -> &'static [&'static str] {
            self.keys
        }
        /// "local" expands offline only and attaches read-write only.
        fn online_expansion(&self) -> bool {
            self.name != "local"
        }
        fn publish_readonly(&self) -> bool {
            self.name != "local"
        }
        async fn ready(&self) -> CsiResult<()> {
            Ok(())
        }
        async fn create_volume(&self, r: &CreateVolume) -> CsiResult<Volume> {
            self.record(format!("create {} {:?}", r.name, r.source));
            let volume = Volume {
                id: format!("{}-{}", &self.name[..2], r.name),
                capacity_bytes: r.required_bytes,
                context: r.parameters.clone(),
                source: r.source.clone(),
                topology: vec![],
            };
            self.volumes
                .lock()
                .unwrap()
                .insert(volume.id.clone(), volume.clone());
            Ok(volume)
        }
        async fn delete_volume(&self, id: &str) -> CsiResult<()> {
            self.record(format!("delete {id}"));
            self.volumes.lock().unwrap().remove(id);
            Ok(())
        }
        async fn get_volume(&self, id: &str) -> CsiResult<VolumeStatus> {
            self.record(format!("get {id}"));
            let volume = self.volumes.lock().unwrap().get(id).cloned();
            volume
                .map(|volume| VolumeStatus {
                    volume,
                    published_nodes: vec![],
                    abnormal: None,
                })
                .ok_or_else(|| CsiError::NotFound(id.into()))
        }
        async fn list_volumes(&self) -> CsiResult<Vec<VolumeStatus>> {
            let volumes: Vec<Volume> = self.volumes.lock().unwrap().values().cloned().collect();
            Ok(volumes
                .into_iter()
                .map(|volume| VolumeStatus {
                    volume,
                    published_nodes: vec![],
                    abnormal: None,
                })
                .collect())
        }
        async fn publish(&self, id: &str, node: &str, _ro: bool) -> CsiResult<Map> {
            self.record(format!("publish {id} {node}"));
            Ok(Map::new())
        }
        async fn unpublish(&self, id: &str, _node: Option<&str>) -> CsiResult<()> {
            self.record(format!("unpublish {id}"));
            Ok(())
        }
        async fn expand(&self, id: &str, required: u64, _limit: u64) -> CsiResult<u64> {
            self.record(format!("expand {id}"));
            Ok(required)
        }
        async fn capacity(&self) -> CsiResult<Capacity> {
            Err(CsiError::Unimplemented("fake".into()))
        }
        async fn create_snapshot(&self, source: &str, name: &str) -> CsiResult<Snapshot> {
            self.record(format!("snapshot {source}"));
            Ok(Snapshot {
                id: format!("snap-{name}"),
                source_volume_id: source.into(),
                size_bytes: 1,
                created: std::time::UNIX_EPOCH,
                ready: true,
                group_snapshot_id: None,
            })
        }
        async fn delete_snapshot(&self, id: &str) -> CsiResult<()> {
            self.record(format!("delete-snapshot {id}"));
            Ok(())
        }
        async fn list_snapshots(&self) -> CsiResult<Vec<Snapshot>> {
            Ok(vec![])
        }
    }

    #[async_trait]
    impl NodeBackend for Fake {
        fn topology(&self) -> Map {
            Map::from([(format!("{}/key", self.name), "here".into())])
        }
        fn max_volumes(&self) -> u64 {
            if self.name == "cloud" { 125 } else { 256 }
        }
        async fn ready(&self) -> CsiResult<()> {
            Ok(())
        }
        async fn attach_device(&self, id: &str, _c: &Map) -> CsiResult<PathBuf> {
            self.record(format!("attach {id}"));
            Ok(PathBuf::from("/dev/null"))
        }
        async fn find_device(&self, id: &str) -> CsiResult<Option<PathBuf>> {
            self.record(format!("find {id}"));
            Ok(None)
        }
        async fn detach_device(&self, id: &str) -> CsiResult<()> {
            self.record(format!("detach {id}"));
            Ok(())
        }
        async fn refresh_device(&self, id: &str) -> CsiResult<u64> {
            self.record(format!("refresh {id}"));
            Ok(0)
        }
    }

    fn router() -> (Router, Arc<Fake>, Arc<Fake>) {
        let cloud = Fake::new("cloud", &["cloud/type"], true);
        let local = Fake::new("local", &[], false);
        let router = Router::new(vec![
            Route {
                backend: cloud.clone(),
                node: cloud.clone(),
            },
            Route {
                backend: local.clone(),
                node: local.clone(),
            },
        ])
        .unwrap();
        (router, cloud, local)
    }

    fn request(name: &str, parameters: &[(&str, &str)]) -> CreateVolume {
        CreateVolume {
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..CreateVolume::sized(name, 1, 0)
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn creates_go_where_the_parameter_says_and_ids_route_back() {
        run(async {
            let (router, cloud, local) = router();
            let a = router
                .create_volume(&request("a", &[("cloud/type", "x")]))
                .await
                .unwrap();
            assert_eq!(a.id, "cl-a", "default backend IDs are unchanged");
            let b = router
                .create_volume(&request("b", &[(BACKEND, "local")]))
                .await
                .unwrap();
            assert_eq!(b.id, "local:lo-b");
            assert!(b.context.is_empty(), "the choice is not passed on");
            router.publish(&b.id, "n1", false).await.unwrap();
            router.expand(&b.id, 5, 0).await.unwrap();
            router.delete_volume(&b.id).await.unwrap();
            router.publish(&a.id, "n1", false).await.unwrap();
            router.delete_volume(&a.id).await.unwrap();
            assert_eq!(
                cloud.calls(),
                ["create a None", "publish cl-a n1", "delete cl-a"]
            );
            assert_eq!(
                local.calls(),
                [
                    "create b None",
                    "publish lo-b n1",
                    "expand lo-b",
                    "delete lo-b"
                ]
            );
        });
    }

    #[test]
    fn parameters_of_another_backend_and_unknown_backends_are_refused() {
        run(async {
            let (router, _, _) = router();
            let err = router
                .create_volume(&request("c", &[(BACKEND, "local"), ("cloud/type", "x")]))
                .await
                .unwrap_err();
            assert!(matches!(err, CsiError::InvalidArgument(ref m) if m.contains("cloud/type")));
            let err = router
                .create_volume(&request("d", &[(BACKEND, "nowhere")]))
                .await
                .unwrap_err();
            assert!(matches!(err, CsiError::InvalidArgument(_)));
            assert_eq!(router.parameter_keys(), ["cloud/type"]);
            assert_eq!(router.backend_names(), ["cloud", "local"]);
        });
    }

    #[test]
    fn sources_stay_within_their_backend() {
        run(async {
            let (router, cloud, _) = router();
            let a = router.create_volume(&request("a", &[])).await.unwrap();
            let snap = router.create_snapshot(&a.id, "s").await.unwrap();
            assert_eq!(snap.id, "snap-s");
            let mut from = request("b", &[(BACKEND, "local")]);
            from.source = Some(ContentSource::Snapshot(snap.id.clone()));
            let err = router.create_volume(&from).await.unwrap_err();
            assert!(matches!(err, CsiError::InvalidArgument(_)), "{err}");
            let mut from = request("c", &[]);
            from.source = Some(ContentSource::Snapshot(snap.id.clone()));
            let c = router.create_volume(&from).await.unwrap();
            assert_eq!(c.source, Some(ContentSource::Snapshot("snap-s".into())));
            assert!(
                cloud
                    .calls()
                    .contains(&"create c Some(Snapshot(\"snap-s\"))".to_string())
            );
            let err = router.create_snapshot("local:lo-x", "t").await.unwrap_err();
            assert!(matches!(err, CsiError::Unimplemented(_)));
        });
    }

    #[test]
    fn listing_merges_and_node_calls_route() {
        run(async {
            let (router, cloud, local) = router();
            router.create_volume(&request("a", &[])).await.unwrap();
            router
                .create_volume(&request("b", &[(BACKEND, "local")]))
                .await
                .unwrap();
            let ids: Vec<String> = router
                .list_volumes()
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.volume.id)
                .collect();
            assert_eq!(ids, ["cl-a", "local:lo-b"]);
            assert_eq!(
                router.get_volume("local:lo-b").await.unwrap().volume.id,
                "local:lo-b"
            );
            router
                .attach_device("local:lo-b", &Map::new())
                .await
                .unwrap();
            router.find_device("cl-a").await.unwrap();
            router.refresh_device("local:lo-b").await.unwrap();
            assert!(
                local
                    .calls()
                    .ends_with(&["attach lo-b".into(), "refresh lo-b".into()])
            );
            assert!(cloud.calls().ends_with(&["find cl-a".into()]));
            assert_eq!(router.max_volumes(), 125);
            assert_eq!(router.topology().len(), 2);
            let f = router.features();
            assert!(f.snapshots && f.attach && !f.clone);
        });
    }

    #[test]
    fn capabilities_are_the_ones_every_backend_has() {
        let (router, _, _) = router();
        assert!(!router.online_expansion(), "local expands offline only");
        assert!(!router.publish_readonly(), "local attaches read-write only");
        let cloud = Fake::new("cloud", &[], true);
        let alone = Router::new(vec![Route {
            backend: cloud.clone(),
            node: cloud,
        }])
        .unwrap();
        assert!(alone.online_expansion() && alone.publish_readonly());
    }

    #[test]
    fn capacity_is_the_selected_backends() {
        run(async {
            let (router, _, _) = router();
            let err = router.capacity_for(&Map::new()).await.unwrap_err();
            assert!(
                matches!(err, CsiError::Unimplemented(ref m) if m.contains("cloud")),
                "{err}"
            );
            let nowhere = Map::from([(BACKEND.to_string(), "nowhere".to_string())]);
            let err = router.capacity_for(&nowhere).await.unwrap_err();
            assert!(matches!(err, CsiError::InvalidArgument(_)), "{err}");
        });
    }

    #[test]
    fn duplicate_backends_are_refused() {
        let a = Fake::new("cloud", &[], false);
        let routes = vec![
            Route {
                backend: a.clone(),
                node: a.clone(),
            },
            Route {
                backend: a.clone(),
                node: a,
            },
        ];
        assert!(Router::new(routes).is_err());
    }
}
