//! Settings of the cloud providers: a section per provider in the config
//! file, overridden by the providers' own environment variable names.

use serde::Deserialize;

use secrecy::SecretString as Secret;

/// `[cloudscale]` in the config file.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CloudscaleSettings {
    /// `CLOUDSCALE_ACCESS_TOKEN`
    pub access_token: Option<Secret>,
    /// `CLOUDSCALE_API_URL` (default https://api.cloudscale.ch)
    pub api_url: Option<String>,
    /// `CLOUDSCALE_METADATA_URL` (default http://169.254.169.254)
    pub metadata_url: Option<String>,
    /// `CLOUDSCALE_MAX_CSI_VOLUMES_PER_NODE` (default 125)
    pub max_csi_volumes_per_node: Option<u64>,
    /// `CLOUDSCALE_API_REQUESTS_PER_SECOND`: the client's rate limit
    /// (default 20, bursts of twice as many).
    pub api_requests_per_second: Option<f64>,
}

/// `[civo]` in the config file.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CivoSettings {
    /// `CIVO_API_KEY`
    pub api_key: Option<Secret>,
    /// `CIVO_API_URL` (default https://api.civo.com)
    pub api_url: Option<String>,
    /// `CIVO_REGION` (or civo-csi's `REGION`; `CIVO_REGION` wins)
    pub region: Option<String>,
    /// `CIVO_CLUSTER_ID`
    pub cluster_id: Option<String>,
    /// `CIVO_METADATA_URL`
    pub metadata_url: Option<String>,
    /// The node's Civo instance id; `NODE_ID` (civo-csi's name). Read
    /// after the civostatsd file, before the API lookup by node name.
    pub instance_id: Option<String>,
    /// Where the node's civostatsd settings live; `CIVO_STATSD_FILE`
    /// (default /etc/civostatsd).
    pub statsd_file: Option<std::path::PathBuf>,
    /// Requests per second the driver sends the Civo API at most;
    /// `CIVO_API_REQUESTS_PER_SECOND` (default 20).
    pub api_requests_per_second: Option<f64>,
    /// Whether the driver takes volume snapshots; `CIVO_VOLUME_SNAPSHOTS`
    /// (default false: Civo's public API documentation does not describe
    /// volume snapshots, so they are used only where an operator knows the
    /// region offers them).
    pub volume_snapshots: Option<bool>,
}

/// `[packet]` in the config file.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PacketSettings {
    /// `PACKET_API_KEY`
    pub api_key: Option<Secret>,
    /// `PACKET_PROJECT_ID`
    pub project_id: Option<String>,
    /// `PACKET_FACILITY_ID`
    pub facility_id: Option<String>,
    /// `PACKET_API_URL` (default https://api.packet.net)
    pub api_url: Option<String>,
    /// `PACKET_METADATA_URL` (default https://metadata.packet.net)
    pub metadata_url: Option<String>,
    /// `PACKET_ATTACH_MODE`: how the node reaches an attached volume:
    /// `iscsi` (default, real servers) or `linked` (emulation and tests:
    /// the device is already linked as `volume-<8 hex>` in the device dir).
    pub attach_mode: Option<String>,
    /// `PACKET_REQUESTS_PER_SECOND`: the most API requests the controller
    /// sends per second (default 20).
    pub requests_per_second: Option<f64>,
}

/// All providers' settings.
#[derive(Deserialize, Debug, Default, Clone)]
pub struct CloudSettings {
    #[serde(default)]
    pub cloudscale: CloudscaleSettings,
    #[serde(default)]
    pub civo: CivoSettings,
    #[serde(default)]
    pub packet: PacketSettings,
}

impl CloudSettings {
    /// Overrides file values with the providers' environment variables;
    /// `env` looks a variable up (std::env::var outside tests). An empty
    /// variable counts as unset.
    pub fn overlay_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        let cs = &mut self.cloudscale;
        set_secret(&mut cs.access_token, get("CLOUDSCALE_ACCESS_TOKEN"));
        set(&mut cs.api_url, get("CLOUDSCALE_API_URL"));
        set(&mut cs.metadata_url, get("CLOUDSCALE_METADATA_URL"));
        if let Some(n) = get("CLOUDSCALE_MAX_CSI_VOLUMES_PER_NODE").and_then(|v| v.parse().ok()) {
            cs.max_csi_volumes_per_node = Some(n);
        }
        if let Some(n) = get("CLOUDSCALE_API_REQUESTS_PER_SECOND").and_then(|v| v.parse().ok()) {
            cs.api_requests_per_second = Some(n);
        }
        let civo = &mut self.civo;
        set_secret(&mut civo.api_key, get("CIVO_API_KEY"));
        set(&mut civo.api_url, get("CIVO_API_URL"));
        set(&mut civo.region, get("REGION"));
        set(&mut civo.region, get("CIVO_REGION"));
        set(&mut civo.instance_id, get("NODE_ID"));
        if let Some(path) = get("CIVO_STATSD_FILE") {
            civo.statsd_file = Some(path.into());
        }
        if let Some(rate) = get("CIVO_API_REQUESTS_PER_SECOND").and_then(|v| v.parse().ok()) {
            civo.api_requests_per_second = Some(rate);
        }
        set(&mut civo.cluster_id, get("CIVO_CLUSTER_ID"));
        if let Some(flag) = get("CIVO_VOLUME_SNAPSHOTS") {
            civo.volume_snapshots = Some(matches!(
                flag.to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            ));
        }
        set(&mut civo.metadata_url, get("CIVO_METADATA_URL"));
        let packet = &mut self.packet;
        set_secret(&mut packet.api_key, get("PACKET_API_KEY"));
        set(&mut packet.project_id, get("PACKET_PROJECT_ID"));
        set(&mut packet.facility_id, get("PACKET_FACILITY_ID"));
        set(&mut packet.api_url, get("PACKET_API_URL"));
        set(&mut packet.metadata_url, get("PACKET_METADATA_URL"));
        set(&mut packet.attach_mode, get("PACKET_ATTACH_MODE"));
        if let Some(n) = get("PACKET_REQUESTS_PER_SECOND").and_then(|v| v.parse().ok()) {
            packet.requests_per_second = Some(n);
        }
    }
}

fn set(slot: &mut Option<String>, value: Option<String>) {
    if value.is_some() {
        *slot = value;
    }
}

fn set_secret(slot: &mut Option<Secret>, value: Option<String>) {
    if let Some(v) = value {
        *slot = Some(Secret::from(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn credentials_never_print() {
        let mut settings = CloudSettings::default();
        set_secret(&mut settings.civo.api_key, Some("tok-12345".into()));
        let text = format!("{settings:?}");
        assert!(!text.contains("tok-12345"), "{text}");
        assert!(text.contains("REDACTED"), "{text}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut settings: CloudSettings = toml::from_str(
            "[cloudscale]\naccess-token = \"from-file\"\napi-url = \"http://file\"\n[civo]\nregion = \"LON1\"\n",
        )
        .unwrap();
        settings.overlay_env(|name| match name {
            "CLOUDSCALE_ACCESS_TOKEN" => Some("from-env".into()),
            "CIVO_REGION" => Some(String::new()),
            "CLOUDSCALE_MAX_CSI_VOLUMES_PER_NODE" => Some("10".into()),
            _ => None,
        });
        assert_eq!(
            settings
                .cloudscale
                .access_token
                .as_ref()
                .unwrap()
                .expose_secret(),
            "from-env"
        );
        assert_eq!(settings.cloudscale.api_url.as_deref(), Some("http://file"));
        assert_eq!(settings.cloudscale.max_csi_volumes_per_node, Some(10));
        assert_eq!(settings.civo.region.as_deref(), Some("LON1"));
        assert!(!format!("{settings:?}").contains("from-env"));
    }

    #[test]
    fn civo_reads_civo_csi_names_and_its_own() {
        let mut settings = CloudSettings::default();
        settings.overlay_env(|name| match name {
            "REGION" => Some("NYC1".into()),
            "NODE_ID" => Some("instance-1".into()),
            "CIVO_STATSD_FILE" => Some("/tmp/statsd".into()),
            "CIVO_API_REQUESTS_PER_SECOND" => Some("50".into()),
            _ => None,
        });
        let civo = &settings.civo;
        assert_eq!(civo.region.as_deref(), Some("NYC1"));
        assert_eq!(civo.instance_id.as_deref(), Some("instance-1"));
        assert_eq!(
            civo.statsd_file.as_deref(),
            Some(std::path::Path::new("/tmp/statsd"))
        );
        assert_eq!(civo.api_requests_per_second, Some(50.0));
        assert_eq!(civo.volume_snapshots, None);
        settings.overlay_env(|name| (name == "CIVO_VOLUME_SNAPSHOTS").then(|| "true".to_string()));
        assert_eq!(settings.civo.volume_snapshots, Some(true));
        settings.overlay_env(|name| (name == "CIVO_REGION").then(|| "FRA1".to_string()));
        assert_eq!(settings.civo.region.as_deref(), Some("FRA1"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<CloudSettings>("[civo]\napikey = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("apikey"), "{err}");
    }
}
