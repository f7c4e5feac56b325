//! The CSI v1.12 wire types and the gRPC adapters that serve them.

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("csi.v1");
    include!(concat!(env!("OUT_DIR"), "/csi_redacted_debug.rs"));
}

pub use generated::*;

/// Prints the keys of a secrets map, never its values.
pub struct RedactedMap<'a>(pub &'a std::collections::HashMap<String, String>);

impl std::fmt::Debug for RedactedMap<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort();
        f.debug_map()
            .entries(keys.into_iter().map(|k| (k, "<redacted>")))
            .finish()
    }
}

pub mod block_style;
pub mod controller;
pub mod group_controller;
pub mod identity;
pub mod made_as;
pub mod node;
pub mod paging;
pub mod params;
pub mod snapshot_metadata;
pub mod validate;
