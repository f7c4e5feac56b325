//! Settings for `multicsi serve`, layered: built-in defaults < config file <
//! environment < command-line flags.
//!
//! clap resolves "flag, else environment variable" for every option; the
//! config file fills what neither gave, and defaults fill the rest.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Deserialize;

use crate::cloud::settings::{CivoSettings, CloudSettings, CloudscaleSettings, PacketSettings};
use crate::csi::block_style::BlockStyle;
use crate::node::luks::Pbkdf;

/// Default CSI driver name.
pub const DEFAULT_DRIVER_NAME: &str = "multicsi.io";
/// Default state directory of the hostpath backend.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/multicsi";
/// Default kubelet directory: every node path must lie inside it.
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet";
/// Default directory where attached cloud disks appear.
pub const DEFAULT_DEVICE_DIR: &str = "/dev/disk/by-id";

/// Which CSI services this process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Identity and Controller.
    Controller,
    /// Identity and Node.
    Node,
    /// Identity, Controller and Node.
    All,
}

impl Mode {
    pub fn serves_controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }
    pub fn serves_node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON lines (for containers).
    Json,
    /// Human-readable text (for terminals).
    Text,
}

/// The flags of `multicsi serve`; each may also come from the environment
/// variable named beside it, or from the config file.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// CSI endpoint: unix:///path/to/csi.sock or tcp://HOST:PORT.
    #[arg(long, env = "MULTICSI_ENDPOINT")]
    pub endpoint: Option<String>,
    /// This node's ID, as reported by NodeGetInfo (usually the Kubernetes node name).
    #[arg(long, env = "MULTICSI_NODE_ID")]
    pub node_id: Option<String>,
    /// Services to serve.
    #[arg(long, value_enum, env = "MULTICSI_MODE")]
    pub mode: Option<Mode>,
    /// CSI driver name reported by GetPluginInfo.
    #[arg(long, env = "MULTICSI_DRIVER_NAME")]
    pub driver_name: Option<String>,
    /// Directory where the hostpath backend keeps its images and state.
    #[arg(long, env = "MULTICSI_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The kubelet's directory: staging, target and volume paths of node
    /// requests must lie inside it (default /var/lib/kubelet).
    #[arg(long, env = "MULTICSI_KUBELET_DIR")]
    pub kubelet_dir: Option<PathBuf>,
    /// TOML config file; its values are overridden by environment and flags.
    #[arg(long, env = "MULTICSI_CONFIG")]
    pub config: Option<PathBuf>,
    /// Storage backend (the default one when several are served).
    #[arg(long, env = "MULTICSI_BACKEND")]
    pub backend: Option<String>,
    /// Several backends in one driver, comma-separated; the first (or
    /// --backend) is the default, StorageClasses pick another with
    /// multicsi.io/backend.
    #[arg(long, env = "MULTICSI_BACKENDS", value_delimiter = ',')]
    pub backends: Option<Vec<String>>,
    /// A node-only process (--mode=node) of a multi-cloud driver: the
    /// backends whose node calls it serves, comma-separated (default: all
    /// of --backends). A node belongs to one cloud; the others' volumes are
    /// refused here with FAILED_PRECONDITION.
    #[arg(long, env = "MULTICSI_NODE_BACKENDS", value_delimiter = ',')]
    pub node_backends: Option<Vec<String>>,
    /// Maximum number of volumes this node accepts (0 = the backend's default).
    #[arg(long, env = "MULTICSI_MAX_VOLUMES_PER_NODE")]
    pub max_volumes_per_node: Option<u64>,
    /// Log format: json or text (default: text on a terminal, json otherwise).
    #[arg(long, value_enum, env = "MULTICSI_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or multicsi=debug.
    #[arg(long, env = "MULTICSI_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Directory where cloud volumes appear as device links (default /dev/disk/by-id).
    #[arg(long, env = "MULTICSI_DEVICE_DIR")]
    pub device_dir: Option<PathBuf>,
    /// Memory cost in KiB of the argon2id key derivation of new LUKS volumes
    /// (default 65536; also what opening one costs: keep it under the
    /// node plugin's memory limit).
    #[arg(long, env = "MULTICSI_LUKS_PBKDF_MEMORY_KIB")]
    pub luks_pbkdf_memory_kib: Option<u32>,
    /// Time cost (iterations, at least 4) of the argon2id key derivation of new LUKS volumes (default 4).
    #[arg(long, env = "MULTICSI_LUKS_PBKDF_ITERATIONS")]
    pub luks_pbkdf_iterations: Option<u32>,
    /// Address of the /metrics, /healthz and /readyz listener, e.g. 0.0.0.0:9820
    /// (port 0: any free port); off (the default) serves none.
    #[arg(long, env = "MULTICSI_METRICS_ADDRESS")]
    pub metrics_address: Option<String>,
    /// How the SnapshotMetadata service describes ranges: 0 (the default)
    /// gives variable-length extents, a power of two from 4096 to 1048576
    /// gives fixed-length blocks of that many bytes.
    #[arg(long, env = "MULTICSI_METADATA_BLOCK_SIZE")]
    pub metadata_block_size: Option<u64>,
}

/// Every layer merged: the config file's keys, the same names as the flags
/// (kebab-case). Keys with a built-in default are always present.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Layers {
    endpoint: Option<String>,
    node_id: Option<String>,
    /// Read as text and checked by [`parse_enum`]: the names clap knows.
    mode: String,
    driver_name: String,
    state_dir: PathBuf,
    kubelet_dir: PathBuf,
    backend: Option<String>,
    backends: Option<Vec<String>>,
    node_backends: Option<Vec<String>>,
    max_volumes_per_node: u64,
    log_format: Option<String>,
    log_level: String,
    device_dir: PathBuf,
    luks_pbkdf_memory_kib: u32,
    luks_pbkdf_iterations: u32,
    metrics_address: Option<String>,
    metadata_block_size: u64,
    cloudscale: Option<CloudscaleSettings>,
    civo: Option<CivoSettings>,
    packet: Option<PacketSettings>,
}

/// The resolved settings of a server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub endpoint: Endpoint,
    pub node_id: String,
    pub mode: Mode,
    pub driver_name: String,
    pub state_dir: PathBuf,
    /// Node paths must resolve to a place inside this directory.
    pub kubelet_dir: PathBuf,
    /// The default backend.
    pub backend: String,
    /// Every backend served, the default first.
    pub backends: Vec<String>,
    /// The backends whose node half this process serves (all of `backends`
    /// unless a node-only process names fewer).
    pub node_backends: Vec<String>,
    pub max_volumes_per_node: u64,
    pub log_format: Option<LogFormat>,
    pub log_level: String,
    pub device_dir: PathBuf,
    /// Key derivation cost of new LUKS volumes.
    pub luks_pbkdf: Pbkdf,
    /// Where /metrics, /healthz and /readyz are served; None: nowhere.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Extents or fixed blocks in SnapshotMetadata replies.
    pub metadata_blocks: BlockStyle,
    /// Provider credentials and settings (file, then the providers' own
    /// environment variables).
    pub clouds: CloudSettings,
}

/// Where the gRPC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(std::net::SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Endpoint {
    /// Parses `unix:///path`, `unix:/path` or `tcp://host:port`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
        {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "endpoint {text:?}: the socket path must be absolute, e.g. unix:///csi/csi.sock"
                )));
            }
            return Ok(Endpoint::Unix(path));
        }
        if let Some(addr) = text.strip_prefix("tcp://") {
            return addr.parse().map(Endpoint::Tcp).map_err(|_| {
                ConfigError::Invalid(format!(
                    "endpoint {text:?}: expected tcp://IP:PORT, e.g. tcp://127.0.0.1:10000"
                ))
            });
        }
        Err(ConfigError::Invalid(format!(
            "endpoint {text:?}: use unix:///path/to/csi.sock or tcp://IP:PORT"
        )))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

/// A path as a config value: config values are text, so a path must be UTF-8.
fn path_value(key: &str, path: Option<&Path>) -> Result<Option<String>, ConfigError> {
    path.map(|p| {
        p.to_str().map(str::to_string).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{key} {}: the path is not valid UTF-8; use a UTF-8 path",
                p.display()
            ))
        })
    })
    .transpose()
}

/// A clap value enum as its config text (`node`, `json`, ...).
fn enum_text<E: ValueEnum>(value: Option<E>) -> Option<String> {
    value
        .and_then(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
}

/// What clap read (a flag, else its environment variable), by config key.
fn clap_layer(args: &ServeArgs) -> Result<Vec<(&'static str, Option<config::Value>)>, ConfigError> {
    let text = |v: &Option<String>| v.clone().map(config::Value::from);
    let path = |key: &str, v: &Option<PathBuf>| {
        path_value(key, v.as_deref()).map(|p| p.map(config::Value::from))
    };
    Ok(vec![
        ("endpoint", text(&args.endpoint)),
        ("node-id", text(&args.node_id)),
        ("mode", enum_text(args.mode).map(config::Value::from)),
        ("driver-name", text(&args.driver_name)),
        ("state-dir", path("state dir", &args.state_dir)?),
        ("kubelet-dir", path("kubelet dir", &args.kubelet_dir)?),
        ("backend", text(&args.backend)),
        ("backends", args.backends.clone().map(config::Value::from)),
        (
            "node-backends",
            args.node_backends.clone().map(config::Value::from),
        ),
        (
            "max-volumes-per-node",
            args.max_volumes_per_node.map(config::Value::from),
        ),
        (
            "log-format",
            enum_text(args.log_format).map(config::Value::from),
        ),
        ("log-level", text(&args.log_level)),
        ("device-dir", path("device dir", &args.device_dir)?),
        (
            "luks-pbkdf-memory-kib",
            args.luks_pbkdf_memory_kib.map(config::Value::from),
        ),
        (
            "luks-pbkdf-iterations",
            args.luks_pbkdf_iterations.map(config::Value::from),
        ),
        ("metrics-address", text(&args.metrics_address)),
        (
            "metadata-block-size",
            args.metadata_block_size.map(config::Value::from),
        ),
    ])
}

/// Merges the layers: built-in defaults < config file < what clap read
/// (a flag, else its environment variable).
fn merge_layers(args: &ServeArgs) -> Result<Layers, ConfigError> {
    let file_text = match &args.config {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let overrides = clap_layer(args)?;
    let layer_error = |e: config::ConfigError| match &args.config {
        Some(path) => ConfigError::Parse {
            path: path.clone(),
            message: e.to_string(),
        },
        None => ConfigError::Invalid(e.to_string()),
    };
    let defaults: [(&str, config::Value); 10] = [
        ("mode", "all".into()),
        ("driver-name", DEFAULT_DRIVER_NAME.into()),
        ("state-dir", DEFAULT_STATE_DIR.into()),
        ("kubelet-dir", DEFAULT_KUBELET_DIR.into()),
        ("max-volumes-per-node", 0u64.into()),
        ("log-level", "info".into()),
        ("device-dir", DEFAULT_DEVICE_DIR.into()),
        ("luks-pbkdf-memory-kib", Pbkdf::DEFAULT.memory_kib.into()),
        ("luks-pbkdf-iterations", Pbkdf::DEFAULT.iterations.into()),
        ("metadata-block-size", 0u64.into()),
    ];
    let mut builder = config::Config::builder();
    for (key, value) in defaults {
        builder = builder.set_default(key, value).map_err(layer_error)?;
    }
    if let Some(text) = &file_text {
        builder = builder.add_source(config::File::from_str(text, config::FileFormat::Toml));
    }
    for (key, value) in overrides {
        builder = builder
            .set_override_option(key, value)
            .map_err(layer_error)?;
    }
    builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(layer_error)
}

impl Settings {
    /// Resolves flags/environment over the config file over the defaults.
    pub fn resolve(args: ServeArgs) -> Result<Self, ConfigError> {
        let layers = merge_layers(&args)?;
        // A bad value that clap did not refuse came from the file.
        let from_file = |message: String| match &args.config {
            Some(path) => ConfigError::Parse {
                path: path.clone(),
                message,
            },
            None => ConfigError::Invalid(message),
        };
        let mode: Mode = parse_enum("mode", &layers.mode).map_err(from_file)?;
        let log_format: Option<LogFormat> = layers
            .log_format
            .as_deref()
            .map(|text| parse_enum("log-format", text))
            .transpose()
            .map_err(from_file)?;
        let endpoint = layers.endpoint.ok_or_else(|| {
            ConfigError::Invalid(
                "no endpoint: pass --endpoint unix:///path/csi.sock (or MULTICSI_ENDPOINT)".into(),
            )
        })?;
        let node_id = layers.node_id.ok_or_else(|| {
            ConfigError::Invalid(
                "no node id: pass --node-id NAME (or MULTICSI_NODE_ID), usually the Kubernetes node name"
                    .into(),
            )
        })?;
        if node_id.is_empty() || node_id.len() > 128 {
            return Err(ConfigError::Invalid(
                "node id must be 1 to 128 bytes long".into(),
            ));
        }
        validate_driver_name(&layers.driver_name)?;
        if !layers.state_dir.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "state dir {} must be an absolute path",
                layers.state_dir.display()
            )));
        }
        if !layers.kubelet_dir.is_absolute() {
            return Err(ConfigError::Invalid(format!(
                "kubelet dir {} must be an absolute path: pass --kubelet-dir (or MULTICSI_KUBELET_DIR) with the kubelet's root directory",
                layers.kubelet_dir.display()
            )));
        }
        let mut clouds = CloudSettings {
            cloudscale: layers.cloudscale.unwrap_or_default(),
            civo: layers.civo.unwrap_or_default(),
            packet: layers.packet.unwrap_or_default(),
        };
        clouds.overlay_env(|name| std::env::var(name).ok());
        let (backend, backends) = choose_backends(layers.backend, layers.backends)?;
        let node_backends = choose_node_backends(&backends, mode, layers.node_backends)?;
        let luks_pbkdf = Pbkdf {
            memory_kib: layers.luks_pbkdf_memory_kib,
            iterations: layers.luks_pbkdf_iterations,
        };
        luks_pbkdf.validate().map_err(ConfigError::Invalid)?;
        Ok(Settings {
            endpoint: Endpoint::parse(&endpoint)?,
            node_id,
            mode,
            driver_name: layers.driver_name,
            state_dir: layers.state_dir,
            kubelet_dir: layers.kubelet_dir,
            backend,
            backends,
            node_backends,
            max_volumes_per_node: layers.max_volumes_per_node,
            log_format,
            log_level: log_filter(layers.log_level)?,
            device_dir: layers.device_dir,
            luks_pbkdf,
            metrics_address: parse_metrics_address(layers.metrics_address.as_deref())?,
            metadata_blocks: BlockStyle::from_size(layers.metadata_block_size)
                .map_err(ConfigError::Invalid)?,
            clouds,
        })
    }
}

/// A value enum from its config text, e.g. `mode = "node"`.
fn parse_enum<E: ValueEnum>(key: &str, text: &str) -> Result<E, String> {
    E::from_str(text, false).map_err(|_| {
        let names: Vec<String> = E::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        format!(
            "{key} {text:?} is not known: use one of {}",
            names.join(", ")
        )
    })
}

/// The log filter, checked: `info` by default.
fn log_filter(level: String) -> Result<String, ConfigError> {
    crate::telemetry::parse_filter(&level).map_err(|e| {
        ConfigError::Invalid(format!(
            "log-level {level:?} is not a log filter ({e}): use a level (error, warn, info, debug, trace) or TARGET=LEVEL pairs separated by commas, e.g. info,multicsi=debug"
        ))
    })?;
    Ok(level)
}

/// The default backend and every backend served (default first): the
/// default is `backend`, else the first of `backends`, else hostpath.
fn choose_backends(
    backend: Option<String>,
    backends: Option<Vec<String>>,
) -> Result<(String, Vec<String>), ConfigError> {
    let mut list: Vec<String> = backends
        .unwrap_or_default()
        .into_iter()
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = list.iter().find(|b| !seen.insert(b.as_str())) {
        return Err(ConfigError::Invalid(format!(
            "backend {twice:?} is listed twice in backends"
        )));
    }
    let default = backend
        .or_else(|| list.first().cloned())
        .unwrap_or_else(|| "hostpath".to_string());
    list.retain(|b| *b != default);
    list.insert(0, default.clone());
    Ok((default, list))
}

/// The backends whose node half a process serves: every one of `backends`,
/// or for a node-only process the ones `node_backends` names (each of them
/// served, none twice).
fn choose_node_backends(
    backends: &[String],
    mode: Mode,
    node_backends: Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    let Some(list) = node_backends else {
        return Ok(backends.to_vec());
    };
    let list: Vec<String> = list
        .into_iter()
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    if list.is_empty() {
        return Err(ConfigError::Invalid(
            "node-backends is empty: name at least one of the backends this node serves, or leave it unset for all".into(),
        ));
    }
    if mode != Mode::Node {
        return Err(ConfigError::Invalid(
            "node-backends is only for a node-only process (--mode=node): a process that serves the controller serves every backend".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for name in &list {
        if !backends.contains(name) {
            return Err(ConfigError::Invalid(format!(
                "node-backends names {name:?}, which is not served (backends: {}): list only served backends",
                backends.join(", ")
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "backend {name:?} is listed twice in node-backends"
            )));
        }
    }
    Ok(list)
}

/// `IP:PORT`, or `off` (or nothing) for no metrics listener.
fn parse_metrics_address(text: Option<&str>) -> Result<Option<std::net::SocketAddr>, ConfigError> {
    match text.map(str::trim) {
        None | Some("") | Some("off") => Ok(None),
        Some(text) => text.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "metrics address {text:?}: expected IP:PORT (e.g. 0.0.0.0:9820, or 127.0.0.1:0 for any free port) or off"
            ))
        }),
    }
}

/// A CSI driver name: at most 63 characters, alphanumerics, '-', '.',
/// beginning and ending with an alphanumeric (CSI spec, GetPluginInfo).
fn validate_driver_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "driver name {name:?}: use at most 63 characters of letters, digits, '-' and '.', starting and ending with a letter or digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            endpoint: Some("unix:///tmp/x.sock".into()),
            node_id: Some("n1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let s = Settings::resolve(args()).unwrap();
        assert_eq!(s.mode, Mode::All);
        assert_eq!(s.driver_name, DEFAULT_DRIVER_NAME);
        assert_eq!(s.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(s.kubelet_dir, PathBuf::from(DEFAULT_KUBELET_DIR));
        assert_eq!(s.backend, "hostpath");
    }

    #[test]
    fn file_fills_what_flags_did_not_give_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "mode = \"node\"\ndriver-name = \"from.file\"\nstate-dir = \"/srv/state\"\nkubelet-dir = \"/srv/kubelet\"\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path);
        a.driver_name = Some("from.flag".into());
        let s = Settings::resolve(a).unwrap();
        assert_eq!(s.mode, Mode::Node);
        assert_eq!(s.driver_name, "from.flag");
        assert_eq!(s.state_dir, PathBuf::from("/srv/state"));
        assert_eq!(s.kubelet_dir, PathBuf::from("/srv/kubelet"));
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "modez = \"node\"\n").unwrap();
        let mut a = args();
        a.config = Some(path);
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.contains("modez"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_refused_with_the_valid_ones_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "driver_name = \"x.y\"\n").unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("driver_name"), "{err}");
        for valid in [
            "driver-name",
            "state-dir",
            "luks-pbkdf-iterations",
            "cloudscale",
        ] {
            assert!(err.contains(valid), "{valid} missing in: {err}");
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn every_flag_keeps_its_environment_variable() {
        use clap::CommandFactory;
        let command = Cli::command();
        let env: std::collections::BTreeMap<String, String> = command
            .get_arguments()
            .filter_map(|a| {
                let name = a.get_env()?.to_str()?.to_string();
                Some((a.get_long()?.to_string(), name))
            })
            .collect();
        let expected = [
            ("endpoint", "MULTICSI_ENDPOINT"),
            ("node-id", "MULTICSI_NODE_ID"),
            ("mode", "MULTICSI_MODE"),
            ("driver-name", "MULTICSI_DRIVER_NAME"),
            ("state-dir", "MULTICSI_STATE_DIR"),
            ("kubelet-dir", "MULTICSI_KUBELET_DIR"),
            ("config", "MULTICSI_CONFIG"),
            ("backend", "MULTICSI_BACKEND"),
            ("backends", "MULTICSI_BACKENDS"),
            ("node-backends", "MULTICSI_NODE_BACKENDS"),
            ("max-volumes-per-node", "MULTICSI_MAX_VOLUMES_PER_NODE"),
            ("log-format", "MULTICSI_LOG_FORMAT"),
            ("log-level", "MULTICSI_LOG_LEVEL"),
            ("device-dir", "MULTICSI_DEVICE_DIR"),
            ("luks-pbkdf-memory-kib", "MULTICSI_LUKS_PBKDF_MEMORY_KIB"),
            ("luks-pbkdf-iterations", "MULTICSI_LUKS_PBKDF_ITERATIONS"),
            ("metrics-address", "MULTICSI_METRICS_ADDRESS"),
            ("metadata-block-size", "MULTICSI_METADATA_BLOCK_SIZE"),
        ]
        .map(|(flag, var)| (flag.to_string(), var.to_string()));
        assert_eq!(env, std::collections::BTreeMap::from(expected));
    }

    #[test]
    fn every_key_layers_defaults_then_file_then_flags() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            concat!(
                "endpoint = \"unix:///file/csi.sock\"\n",
                "node-id = \"file-node\"\n",
                "mode = \"node\"\n",
                "driver-name = \"file.example\"\n",
                "state-dir = \"/file/state\"\n",
                "kubelet-dir = \"/file/kubelet\"\n",
                "backends = [\"cloudscale\", \"hostpath\"]\n",
                "max-volumes-per-node = 7\n",
                "log-format = \"json\"\n",
                "log-level = \"debug\"\n",
                "device-dir = \"/file/dev\"\n",
                "luks-pbkdf-memory-kib = 4096\n",
                "luks-pbkdf-iterations = 6\n",
                "metrics-address = \"127.0.0.1:9820\"\n",
                "[cloudscale]\n",
                "api-url = \"http://file.example/v1\"\n",
            ),
        )
        .unwrap();
        let config = path.to_str().unwrap();
        let from_file =
            Settings::resolve(Cli::parse_from(["x", "--config", config]).serve).unwrap();
        assert_eq!(from_file.endpoint, Endpoint::Unix("/file/csi.sock".into()));
        assert_eq!(from_file.node_id, "file-node");
        assert_eq!(from_file.mode, Mode::Node);
        assert_eq!(from_file.driver_name, "file.example");
        assert_eq!(from_file.state_dir, PathBuf::from("/file/state"));
        assert_eq!(from_file.kubelet_dir, PathBuf::from("/file/kubelet"));
        assert_eq!(from_file.backend, "cloudscale");
        assert_eq!(from_file.backends, ["cloudscale", "hostpath"]);
        assert_eq!(from_file.max_volumes_per_node, 7);
        assert_eq!(from_file.log_format, Some(LogFormat::Json));
        assert_eq!(from_file.log_level, "debug");
        assert_eq!(from_file.device_dir, PathBuf::from("/file/dev"));
        assert_eq!(
            (
                from_file.luks_pbkdf.memory_kib,
                from_file.luks_pbkdf.iterations
            ),
            (4096, 6)
        );
        assert_eq!(
            from_file.metrics_address,
            Some("127.0.0.1:9820".parse().unwrap())
        );
        assert_eq!(
            from_file.clouds.cloudscale.api_url.as_deref(),
            Some("http://file.example/v1")
        );

        let flags = Cli::parse_from([
            "x",
            "--config",
            config,
            "--endpoint",
            "tcp://127.0.0.1:9000",
            "--node-id",
            "flag-node",
            "--mode",
            "controller",
            "--driver-name",
            "flag.example",
            "--state-dir",
            "/flag/state",
            "--kubelet-dir",
            "/flag/kubelet",
            "--backends",
            "civo,hostpath",
            "--backend",
            "hostpath",
            "--max-volumes-per-node",
            "9",
            "--log-format",
            "text",
            "--log-level",
            "warn",
            "--device-dir",
            "/flag/dev",
            "--luks-pbkdf-memory-kib",
            "8192",
            "--luks-pbkdf-iterations",
            "5",
            "--metrics-address",
            "off",
        ]);
        let s = Settings::resolve(flags.serve).unwrap();
        assert_eq!(s.endpoint, Endpoint::Tcp("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(s.node_id, "flag-node");
        assert_eq!(s.mode, Mode::Controller);
        assert_eq!(s.driver_name, "flag.example");
        assert_eq!(s.state_dir, PathBuf::from("/flag/state"));
        assert_eq!(s.kubelet_dir, PathBuf::from("/flag/kubelet"));
        assert_eq!(s.backend, "hostpath");
        assert_eq!(s.backends, ["hostpath", "civo"]);
        assert_eq!(s.max_volumes_per_node, 9);
        assert_eq!(s.log_format, Some(LogFormat::Text));
        assert_eq!(s.log_level, "warn");
        assert_eq!(s.device_dir, PathBuf::from("/flag/dev"));
        assert_eq!(
            (s.luks_pbkdf.memory_kib, s.luks_pbkdf.iterations),
            (8192, 5)
        );
        assert_eq!(s.metrics_address, None);
    }

    #[test]
    fn a_badly_typed_file_value_names_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "mode = \"everything\"\n").unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("everything"), "{err}");
        assert!(err.contains("mode"), "{err}");
        assert!(err.contains("use one of controller, node, all"), "{err}");
    }

    #[test]
    fn log_filter_is_checked() {
        assert_eq!(Settings::resolve(args()).unwrap().log_level, "info");
        for good in ["debug", "warn,multicsi=trace", "multicsi::backend=debug"] {
            let mut a = args();
            a.log_level = Some(good.to_string());
            assert_eq!(Settings::resolve(a).unwrap().log_level, good);
        }
        let mut a = args();
        a.log_level = Some("multicsi=loud".to_string());
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.contains("log-level \"multicsi=loud\""), "{err}");
        assert!(err.contains("info,multicsi=debug"), "{err}");
    }

    #[test]
    fn luks_key_derivation_cost_is_bounded() {
        let s = Settings::resolve(args()).unwrap();
        assert_eq!(s.luks_pbkdf, Pbkdf::DEFAULT);
        let mut a = args();
        a.luks_pbkdf_memory_kib = Some(8192);
        a.luks_pbkdf_iterations = Some(5);
        let s = Settings::resolve(a).unwrap();
        assert_eq!(
            (s.luks_pbkdf.memory_kib, s.luks_pbkdf.iterations),
            (8192, 5)
        );
        let mut a = args();
        a.luks_pbkdf_iterations = Some(1);
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.contains("luks-pbkdf-iterations"), "{err}");
        let mut a = args();
        a.luks_pbkdf_memory_kib = Some(8 * 1024 * 1024);
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.contains("luks-pbkdf-memory-kib"), "{err}");
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:///a/b.sock").unwrap(),
            Endpoint::Unix("/a/b.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:9000").unwrap(),
            Endpoint::Tcp("127.0.0.1:9000".parse().unwrap())
        );
        assert!(Endpoint::parse("unix://relative.sock").is_err());
        assert!(Endpoint::parse("http://x").is_err());
    }

    #[test]
    fn several_backends_put_the_default_first() {
        let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (d, all) = choose_backends(None, None).unwrap();
        assert_eq!(
            (d.as_str(), all),
            ("hostpath", vec!["hostpath".to_string()])
        );
        let (d, all) = choose_backends(None, list(&["cloudscale", "hostpath"])).unwrap();
        assert_eq!(d, "cloudscale");
        assert_eq!(all, ["cloudscale", "hostpath"]);
        let (d, all) =
            choose_backends(Some("hostpath".into()), list(&["cloudscale", "hostpath"])).unwrap();
        assert_eq!(d, "hostpath");
        assert_eq!(all, ["hostpath", "cloudscale"]);
        assert!(choose_backends(None, list(&["civo", "civo"])).is_err());
    }

    #[test]
    fn node_backends_narrow_only_a_node_process_to_served_backends() {
        let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let with = |mode, backends: &[&str], node: Option<Vec<String>>| {
            let mut a = args();
            a.mode = Some(mode);
            a.backends = list(backends);
            a.node_backends = node;
            Settings::resolve(a)
        };
        let s = with(Mode::All, &["cloudscale", "civo"], None).unwrap();
        assert_eq!(s.node_backends, ["cloudscale", "civo"]);
        let s = with(Mode::Node, &["cloudscale", "civo"], list(&[" civo "])).unwrap();
        assert_eq!(s.node_backends, ["civo"]);
        let err = with(Mode::All, &["cloudscale", "civo"], list(&["civo"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--mode=node"), "{err}");
        let err = with(Mode::Node, &["cloudscale", "civo"], list(&["packet"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"packet\", which is not served"), "{err}");
        let err = with(Mode::Node, &["cloudscale", "civo"], list(&["civo", "civo"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice"), "{err}");
        let err = with(Mode::Node, &["cloudscale"], list(&[" "]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn metrics_address_is_off_unless_given() {
        assert_eq!(Settings::resolve(args()).unwrap().metrics_address, None);
        let mut a = args();
        a.metrics_address = Some("127.0.0.1:0".into());
        let s = Settings::resolve(a).unwrap();
        assert_eq!(s.metrics_address, Some("127.0.0.1:0".parse().unwrap()));
        let mut a = args();
        a.metrics_address = Some("off".into());
        assert_eq!(Settings::resolve(a).unwrap().metrics_address, None);
        let mut a = args();
        a.metrics_address = Some(":9820".into());
        let err = Settings::resolve(a).unwrap_err().to_string();
        assert!(err.contains("IP:PORT"), "{err}");
    }

    #[test]
    fn driver_names_are_checked() {
        assert!(validate_driver_name("multicsi.io").is_ok());
        assert!(validate_driver_name("-bad").is_err());
        assert!(validate_driver_name(&"a".repeat(64)).is_err());
    }
}
