//! multicsi: one Kubernetes CSI driver for several storage providers.
pub mod csi;
pub mod node;
