//! Which Civo instance this node is, in which region. Civo has no metadata
//! HTTP service; like civo-csi the driver asks, in order:
//! 1. the civostatsd file (`/etc/civostatsd`: TOML with `instance_id` and
//!    `region`; its `token` is never read into memory we keep);
//! 2. the settings: `NODE_ID` (instance id) and the region;
//! 3. the API: the cluster's instances (`CIVO_CLUSTER_ID`), matched by the
//!    Kubernetes node name (the configured node id) against their
//!    hostnames, or against their ids.

use std::path::Path;

use serde::Deserialize;

use super::api::CivoApi;

/// The default civostatsd file.
pub const STATSD_FILE: &str = "/etc/civostatsd";

/// A node's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    /// Where it was found, for the startup log.
    pub source: &'static str,
}

#[derive(Deserialize)]
struct StatsdFile {
    #[serde(default)]
    instance_id: String,
    #[serde(default)]
    region: String,
}

/// Reads `instance_id` and `region` from a civostatsd file; None when the
/// file does not exist. Other keys (`server`, `token`) are skipped.
pub fn read_statsd(path: &Path) -> Result<Option<(String, String)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    // The parser's message could quote the file (and its token): keep
    // only the position.
    let parsed: StatsdFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| format!(" at byte {}", s.start))
            .unwrap_or_default();
        format!(
            "{} is not a valid civostatsd file (TOML with instance_id and region){at}",
            path.display()
        )
    })?;
    let instance = parsed.instance_id.trim().to_string();
    if instance.is_empty() {
        return Ok(None);
    }
    Ok(Some((instance, parsed.region.trim().to_string())))
}

/// What identity resolution starts from.
pub struct Sources<'a> {
    pub statsd_file: &'a Path,
    pub instance_id: Option<&'a str>,
    pub region: Option<&'a str>,
    /// The Kubernetes node name.
    pub node_name: &'a str,
    pub cluster_id: Option<&'a str>,
}

/// Finds this node's identity (see the module documentation).
pub async fn resolve(
    sources: &Sources<'_>,
    api: impl AsyncFnOnce(&str) -> Result<Option<CivoApi>, String>,
) -> Result<Identity, String> {
    let configured_region = sources.region.filter(|r| !r.is_empty());
    if let Some((instance_id, region)) = read_statsd(sources.statsd_file)? {
        let region = if region.is_empty() {
            configured_region
                .ok_or_else(|| {
                    format!(
                        "{} names no region; set CIVO_REGION",
                        sources.statsd_file.display()
                    )
                })?
                .to_string()
        } else {
            region
        };
        return Ok(Identity {
            instance_id,
            region,
            source: "civostatsd file",
        });
    }
    let region = configured_region.ok_or_else(|| {
        format!(
            "the Civo region is unknown: no {} and no CIVO_REGION (or REGION)",
            sources.statsd_file.display()
        )
    })?;
    if let Some(instance_id) = sources.instance_id.filter(|i| !i.is_empty()) {
        return Ok(Identity {
            instance_id: instance_id.to_string(),
            region: region.to_string(),
            source: "NODE_ID",
        });
    }
    let cluster = sources.cluster_id.ok_or_else(|| {
        format!(
            "cannot tell which Civo instance this node is: no {}, no NODE_ID, and no CIVO_CLUSTER_ID to look the node name up with",
            sources.statsd_file.display()
        )
    })?;
    let api = api(region).await?.ok_or_else(|| {
        "looking the node up in the cluster needs CIVO_API_KEY (or provide /etc/civostatsd or NODE_ID)"
            .to_string()
    })?;
    let instances = api
        .cluster_instances(cluster)
        .await
        .map_err(|e| format!("cannot list the instances of cluster {cluster}: {e}"))?;
    let name = sources.node_name;
    let found = instances
        .iter()
        .find(|i| i.hostname.eq_ignore_ascii_case(name))
        .or_else(|| instances.iter().find(|i| i.id == name))
        .ok_or_else(|| {
            format!(
                "node {name:?} is not among the {} instances of Civo cluster {cluster} (matched by hostname and id)",
                instances.len()
            )
        })?;
    Ok(Identity {
        instance_id: found.id.clone(),
        region: region.to_string(),
        source: "cluster instances",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources<'a>(file: &'a Path) -> Sources<'a> {
        Sources {
            statsd_file: file,
            instance_id: Some("from-env"),
            region: Some("NYC1"),
            node_name: "node-a",
            cluster_id: None,
        }
    }

    async fn no_api(_: &str) -> Result<Option<CivoApi>, String> {
        Ok(None)
    }

    #[tokio::test]
    async fn the_statsd_file_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("civostatsd");
        std::fs::write(
            &file,
            "server = \"https://stats\"\ntoken = \"s3cret\"\ninstance_id = \"inst-1\"\nregion = \"LON1\"\n",
        )
        .unwrap();
        let id = resolve(&sources(&file), no_api).await.unwrap();
        assert_eq!(id.instance_id, "inst-1");
        assert_eq!(id.region, "LON1");
    }

    #[tokio::test]
    async fn environment_follows_when_there_is_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("missing");
        let id = resolve(&sources(&file), no_api).await.unwrap();
        assert_eq!(
            (id.instance_id.as_str(), id.region.as_str()),
            ("from-env", "NYC1")
        );
        let mut s = sources(&file);
        s.instance_id = None;
        let err = resolve(&s, no_api).await.unwrap_err();
        assert!(err.contains("CIVO_CLUSTER_ID"), "{err}");
        s.cluster_id = Some("c");
        let err = resolve(&s, no_api).await.unwrap_err();
        assert!(err.contains("CIVO_API_KEY"), "{err}");
    }

    #[tokio::test]
    async fn a_broken_file_is_reported_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("civostatsd");
        std::fs::write(&file, "token = \"s3cret\nregion = ").unwrap();
        let err = resolve(&sources(&file), no_api).await.unwrap_err();
        assert!(err.contains("not a valid civostatsd file"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
