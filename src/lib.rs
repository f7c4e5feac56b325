//! multicsi: one Kubernetes CSI driver for several storage providers.
pub mod backend;
pub mod blocking;
pub mod client;
pub mod cloud;
pub mod config;
pub mod csi;
pub mod doctor;
pub mod driver;
pub mod emulator;
pub mod error;
pub mod failpoint;
pub mod locks;
pub mod metrics;
pub mod node;
pub mod server;
pub mod telemetry;
