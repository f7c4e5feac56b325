//! multicsi: one Kubernetes CSI driver for several storage providers.
pub mod backend;
pub mod blocking;
pub mod client;
pub mod config;
pub mod csi;
pub mod driver;
pub mod error;
pub mod locks;
pub mod node;
pub mod server;
pub mod telemetry;
