//! What the client prints: every result becomes one `Item` with a readable
//! line (or a few) and one JSON object; `--json` picks the object. The JSON
//! field names follow the CSI messages (`volume_id`, `capacity_bytes`, ...)
//! and are kept stable for scripts.

use std::collections::HashMap;
use std::io::Write;

use serde_json::{Map, Value, json};

use crate::csi as pb;

/// One printed result.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub text: String,
    pub json: Value,
}

/// Writes items as text or as JSON lines.
pub struct Printer<W: Write> {
    json: bool,
    out: W,
}

impl<W: Write> Printer<W> {
    pub fn new(json: bool, out: W) -> Self {
        Printer { json, out }
    }

    pub fn emit(&mut self, item: Item) -> std::io::Result<()> {
        if self.json {
            writeln!(self.out, "{}", item.json)?;
        } else {
            writeln!(self.out, "{}", item.text)?;
        }
        self.out.flush()
    }
}

/// Bytes with one decimal in binary units, e.g. `1.0 GiB`; below 1 KiB in bytes.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes.unsigned_abs() < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = UNITS[0];
    for candidate in UNITS {
        value /= 1024.0;
        unit = candidate;
        if value.abs() < 1024.0 {
            break;
        }
    }
    format!("{value:.1} {unit}")
}

/// A map with sorted keys as JSON.
fn json_map(map: &HashMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

/// A map as `k=v,k=v` with sorted keys.
fn text_map(map: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Joins the non-empty parts with two spaces.
fn line(parts: impl IntoIterator<Item = String>) -> String {
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("  ")
}

/// RFC 3339 UTC time of a protobuf timestamp.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    crate::cloud::timestamp::format_unix(ts.seconds, ts.nanos)
}

fn condition_json(condition: Option<&pb::VolumeCondition>) -> Value {
    condition.map_or(
        Value::Null,
        |c| json!({"abnormal": c.abnormal, "message": c.message}),
    )
}

fn condition_text(condition: Option<&pb::VolumeCondition>) -> String {
    match condition {
        Some(c) if c.abnormal => format!("abnormal: {}", c.message),
        Some(_) => "healthy".into(),
        None => String::new(),
    }
}

/// A volume, with its status when the RPC returned one.
pub fn volume(
    v: &pb::Volume,
    published: Option<&[String]>,
    condition: Option<&pb::VolumeCondition>,
) -> Item {
    use pb::volume_content_source::Type;
    let source = v.content_source.as_ref().and_then(|s| s.r#type.as_ref());
    let (source_json, source_text) = match source {
        Some(Type::Snapshot(s)) => (
            json!({"snapshot_id": s.snapshot_id}),
            format!("from snapshot {}", s.snapshot_id),
        ),
        Some(Type::Volume(s)) => (
            json!({"volume_id": s.volume_id}),
            format!("from volume {}", s.volume_id),
        ),
        None => (Value::Null, String::new()),
    };
    let topology: Vec<String> = v
        .accessible_topology
        .iter()
        .map(|t| text_map(&t.segments))
        .collect();
    let mut object = json!({
        "volume_id": v.volume_id,
        "capacity_bytes": v.capacity_bytes,
        "volume_context": json_map(&v.volume_context),
        "content_source": source_json,
        "accessible_topology": v.accessible_topology.iter().map(|t| json_map(&t.segments)).collect::<Vec<_>>(),
    });
    let mut parts = vec![
        format!("volume {} {}", v.volume_id, human_bytes(v.capacity_bytes)),
        topology.join(" "),
        if v.volume_context.is_empty() {
            String::new()
        } else {
            format!("context {}", text_map(&v.volume_context))
        },
        source_text,
    ];
    if let Some(nodes) = published {
        object["published_node_ids"] = json!(nodes);
        if !nodes.is_empty() {
            parts.push(format!("published to {}", nodes.join(",")));
        }
    }
    if published.is_some() || condition.is_some() {
        object["volume_condition"] = condition_json(condition);
        parts.push(condition_text(condition));
    }
    Item {
        text: line(parts),
        json: object,
    }
}

pub fn snapshot(s: &pb::Snapshot) -> Item {
    let created = s.creation_time.as_ref().map(rfc3339);
    Item {
        text: line([
            format!("snapshot {} {}", s.snapshot_id, human_bytes(s.size_bytes)),
            format!("of {}", s.source_volume_id),
            if s.ready_to_use { "ready" } else { "not ready" }.to_string(),
            created
                .as_ref()
                .map(|c| format!("created {c}"))
                .unwrap_or_default(),
            if s.group_snapshot_id.is_empty() {
                String::new()
            } else {
                format!("group {}", s.group_snapshot_id)
            },
        ]),
        json: json!({
            "snapshot_id": s.snapshot_id,
            "source_volume_id": s.source_volume_id,
            "size_bytes": s.size_bytes,
            "creation_time": created,
            "ready_to_use": s.ready_to_use,
            "group_snapshot_id": s.group_snapshot_id,
        }),
    }
}

/// A group snapshot: a line for the group, then one per member.
pub fn group_snapshot(g: &pb::VolumeGroupSnapshot) -> Item {
    let created = g.creation_time.as_ref().map(rfc3339);
    let members: Vec<Item> = g.snapshots.iter().map(snapshot).collect();
    let head = line([
        format!("group-snapshot {}", g.group_snapshot_id),
        format!("{} snapshots", g.snapshots.len()),
        if g.ready_to_use { "ready" } else { "not ready" }.to_string(),
        created
            .as_ref()
            .map(|c| format!("created {c}"))
            .unwrap_or_default(),
    ]);
    Item {
        text: std::iter::once(head)
            .chain(members.iter().map(|m| format!("  {}", m.text)))
            .collect::<Vec<_>>()
            .join("\n"),
        json: json!({
            "group_snapshot_id": g.group_snapshot_id,
            "creation_time": created,
            "ready_to_use": g.ready_to_use,
            "snapshots": members.into_iter().map(|m| m.json).collect::<Vec<_>>(),
        }),
    }
}

pub fn group_controller_capabilities(r: &pb::GroupControllerGetCapabilitiesResponse) -> Item {
    use pb::group_controller_service_capability::{Type, rpc};
    capabilities(
        r.capabilities
            .iter()
            .filter_map(|c| c.r#type.as_ref())
            .map(|Type::Rpc(r)| enum_name(r.r#type, |e: rpc::Type| e.as_str_name()))
            .collect(),
    )
}

/// The token of the next page, printed after a page's entries.
pub fn next_token(token: &str) -> Item {
    Item {
        text: format!("next-token {token}"),
        json: json!({ "next_token": token }),
    }
}

pub fn plugin_info(r: &pb::GetPluginInfoResponse) -> Item {
    Item {
        text: line([
            format!("driver {} {}", r.name, r.vendor_version),
            text_map(&r.manifest),
        ]),
        json: json!({
            "name": r.name,
            "vendor_version": r.vendor_version,
            "manifest": json_map(&r.manifest),
        }),
    }
}

/// A list of capability names, one per text line.
fn capabilities(names: Vec<String>) -> Item {
    Item {
        text: names
            .iter()
            .map(|n| format!("capability {n}"))
            .collect::<Vec<_>>()
            .join("\n"),
        json: json!({ "capabilities": names }),
    }
}

/// An enum value's proto name, or its number when this client does not know it.
fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(E) -> &'static str) -> String {
    E::try_from(value).map_or_else(|_| format!("UNKNOWN_{value}"), |e| name(e).to_string())
}

pub fn plugin_capabilities(r: &pb::GetPluginCapabilitiesResponse) -> Item {
    use pb::plugin_capability::{Type, service, volume_expansion};
    capabilities(
        r.capabilities
            .iter()
            .filter_map(|c| c.r#type.as_ref())
            .map(|t| match t {
                Type::Service(s) => enum_name(s.r#type, |e: service::Type| e.as_str_name()),
                Type::VolumeExpansion(e) => format!(
                    "VOLUME_EXPANSION_{}",
                    enum_name(e.r#type, |e: volume_expansion::Type| e.as_str_name())
                ),
            })
            .collect(),
    )
}

pub fn controller_capabilities(r: &pb::ControllerGetCapabilitiesResponse) -> Item {
    use pb::controller_service_capability::{Type, rpc};
    capabilities(
        r.capabilities
            .iter()
            .filter_map(|c| c.r#type.as_ref())
            .map(|Type::Rpc(r)| enum_name(r.r#type, |e: rpc::Type| e.as_str_name()))
            .collect(),
    )
}

pub fn node_capabilities(r: &pb::NodeGetCapabilitiesResponse) -> Item {
    use pb::node_service_capability::{Type, rpc};
    capabilities(
        r.capabilities
            .iter()
            .filter_map(|c| c.r#type.as_ref())
            .map(|Type::Rpc(r)| enum_name(r.r#type, |e: rpc::Type| e.as_str_name()))
            .collect(),
    )
}

pub fn probe(r: &pb::ProbeResponse) -> Item {
    Item {
        text: match r.ready {
            Some(true) => "ready".into(),
            Some(false) => "not ready".into(),
            None => "ready (the driver did not say)".into(),
        },
        json: json!({ "ready": r.ready }),
    }
}

pub fn capacity(r: &pb::GetCapacityResponse) -> Item {
    Item {
        text: line([
            format!("capacity available {}", human_bytes(r.available_capacity)),
            r.maximum_volume_size
                .map(|m| format!("maximum volume {}", human_bytes(m)))
                .unwrap_or_default(),
            r.minimum_volume_size
                .map(|m| format!("minimum volume {}", human_bytes(m)))
                .unwrap_or_default(),
        ]),
        json: json!({
            "available_capacity": r.available_capacity,
            "maximum_volume_size": r.maximum_volume_size,
            "minimum_volume_size": r.minimum_volume_size,
        }),
    }
}

pub fn controller_published(
    volume_id: &str,
    node_id: &str,
    r: &pb::ControllerPublishVolumeResponse,
) -> Item {
    Item {
        text: line([
            format!("published {volume_id} to {node_id}"),
            if r.publish_context.is_empty() {
                String::new()
            } else {
                format!("publish-context {}", text_map(&r.publish_context))
            },
        ]),
        json: json!({
            "volume_id": volume_id,
            "node_id": node_id,
            "publish_context": json_map(&r.publish_context),
        }),
    }
}

pub fn validated(volume_id: &str, r: &pb::ValidateVolumeCapabilitiesResponse) -> Item {
    let confirmed = r.confirmed.is_some();
    Item {
        text: match (confirmed, r.message.is_empty()) {
            (true, _) => format!("confirmed {volume_id}"),
            (false, true) => format!("not confirmed {volume_id}"),
            (false, false) => format!("not confirmed {volume_id}: {}", r.message),
        },
        json: json!({
            "volume_id": volume_id,
            "confirmed": confirmed,
            "message": r.message,
        }),
    }
}

/// A volume's new size; `node_expansion_required` comes from the controller only.
pub fn expanded(
    volume_id: &str,
    capacity_bytes: i64,
    node_expansion_required: Option<bool>,
) -> Item {
    let mut object = json!({"volume_id": volume_id, "capacity_bytes": capacity_bytes});
    let mut text = format!("expanded {volume_id} to {}", human_bytes(capacity_bytes));
    if let Some(required) = node_expansion_required {
        object["node_expansion_required"] = json!(required);
        if required {
            text.push_str("  node expansion required");
        }
    }
    Item { text, json: object }
}

pub fn node_info(r: &pb::NodeGetInfoResponse) -> Item {
    let segments = r.accessible_topology.as_ref().map(|t| &t.segments);
    Item {
        text: line([
            format!("node {}", r.node_id),
            format!("max-volumes {}", r.max_volumes_per_node),
            segments.map(text_map).unwrap_or_default(),
        ]),
        json: json!({
            "node_id": r.node_id,
            "max_volumes_per_node": r.max_volumes_per_node,
            "accessible_topology": segments.map_or(Value::Null, json_map),
        }),
    }
}

pub fn stats(volume_id: &str, r: &pb::NodeGetVolumeStatsResponse) -> Item {
    use pb::volume_usage::Unit;
    let mut parts = vec![format!("stats {volume_id}")];
    let mut usage = Vec::new();
    for u in &r.usage {
        let unit = Unit::try_from(u.unit).unwrap_or(Unit::Unknown);
        let show = |n: i64| match unit {
            Unit::Bytes => human_bytes(n),
            _ => n.to_string(),
        };
        parts.push(format!(
            "{} used {} of {} (available {})",
            unit.as_str_name().to_ascii_lowercase(),
            show(u.used),
            show(u.total),
            show(u.available)
        ));
        usage.push(json!({
            "unit": unit.as_str_name(),
            "total": u.total,
            "used": u.used,
            "available": u.available,
        }));
    }
    parts.push(condition_text(r.volume_condition.as_ref()));
    Item {
        text: line(parts),
        json: json!({
            "volume_id": volume_id,
            "usage": usage,
            "volume_condition": condition_json(r.volume_condition.as_ref()),
        }),
    }
}

/// An RPC without a result worth showing: what was done, to which object,
/// and where. `fields` are (JSON name, value); the first is the object's ID.
pub fn done(action: &str, fields: &[(&str, &str)]) -> Item {
    let mut object = Map::new();
    object.insert("action".into(), json!(action));
    let mut parts = vec![action.to_string()];
    for (i, (name, value)) in fields.iter().enumerate() {
        object.insert((*name).into(), json!(value));
        if i == 0 {
            parts[0] = format!("{action} {value}");
        } else if !value.is_empty() {
            parts.push(format!("{name}={value}"));
        }
    }
    Item {
        text: line(parts),
        json: Value::Object(object),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp_volume() -> pb::Volume {
        pb::Volume {
            capacity_bytes: 1 << 30,
            volume_id: "hp-0123".into(),
            volume_context: HashMap::new(),
            content_source: None,
            accessible_topology: vec![pb::Topology {
                segments: [("topology.multicsi.io/node".to_string(), "n1".to_string())].into(),
            }],
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_bytes(5 << 40), "5.0 TiB");
        assert_eq!(human_bytes(i64::MAX), "8.0 EiB");
    }

    #[test]
    fn timestamps() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(rfc3339(&ts(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(&ts(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(
            rfc3339(&ts(1_700_000_000, 5)),
            "2023-11-14T22:13:20.000000005Z"
        );
        assert_eq!(rfc3339(&ts(-1, 0)), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn volume_text_and_json() {
        let item = volume(&hp_volume(), None, None);
        assert_eq!(
            item.text,
            "volume hp-0123 1.0 GiB  topology.multicsi.io/node=n1"
        );
        assert_eq!(
            item.json,
            json!({
                "volume_id": "hp-0123",
                "capacity_bytes": 1073741824,
                "volume_context": {},
                "content_source": null,
                "accessible_topology": [{"topology.multicsi.io/node": "n1"}],
            })
        );
    }

    #[test]
    fn volume_with_source_and_status() {
        let mut v = hp_volume();
        v.volume_context = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        v.content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource {
                    snapshot_id: "hps-9".into(),
                },
            )),
        });
        let condition = pb::VolumeCondition {
            abnormal: true,
            message: "image missing".into(),
        };
        let item = volume(&v, Some(&["n1".to_string()]), Some(&condition));
        assert_eq!(
            item.text,
            "volume hp-0123 1.0 GiB  topology.multicsi.io/node=n1  context a=1,b=2  \
             from snapshot hps-9  published to n1  abnormal: image missing"
        );
        assert_eq!(item.json["content_source"], json!({"snapshot_id": "hps-9"}));
        assert_eq!(item.json["published_node_ids"], json!(["n1"]));
        assert_eq!(
            item.json["volume_condition"],
            json!({"abnormal": true, "message": "image missing"})
        );
        assert_eq!(item.json["volume_context"], json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn group_snapshot_item() {
        let member = |id: &str, volume: &str| pb::Snapshot {
            size_bytes: 1 << 20,
            snapshot_id: id.into(),
            source_volume_id: volume.into(),
            creation_time: Some(prost_types::Timestamp::default()),
            ready_to_use: true,
            group_snapshot_id: "hpg-1".into(),
        };
        let item = group_snapshot(&pb::VolumeGroupSnapshot {
            group_snapshot_id: "hpg-1".into(),
            snapshots: vec![member("hps-a", "hp-a"), member("hps-b", "hp-b")],
            creation_time: Some(prost_types::Timestamp::default()),
            ready_to_use: true,
        });
        assert_eq!(
            item.text,
            "group-snapshot hpg-1  2 snapshots  ready  created 1970-01-01T00:00:00Z\n  \
             snapshot hps-a 1.0 MiB  of hp-a  ready  created 1970-01-01T00:00:00Z  group hpg-1\n  \
             snapshot hps-b 1.0 MiB  of hp-b  ready  created 1970-01-01T00:00:00Z  group hpg-1"
        );
        assert_eq!(item.json["group_snapshot_id"], "hpg-1");
        assert_eq!(item.json["snapshots"][1]["source_volume_id"], "hp-b");
        assert_eq!(item.json["snapshots"][0]["group_snapshot_id"], "hpg-1");
    }

    #[test]
    fn snapshot_item() {
        let item = snapshot(&pb::Snapshot {
            size_bytes: 1 << 30,
            snapshot_id: "hps-1".into(),
            source_volume_id: "hp-1".into(),
            creation_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ready_to_use: true,
            group_snapshot_id: String::new(),
        });
        assert_eq!(
            item.text,
            "snapshot hps-1 1.0 GiB  of hp-1  ready  created 1970-01-01T00:00:00Z"
        );
        assert_eq!(item.json["creation_time"], json!("1970-01-01T00:00:00Z"));
        assert_eq!(item.json["ready_to_use"], json!(true));
        assert_eq!(item.json["size_bytes"], json!(1073741824));
    }

    #[test]
    fn capability_names() {
        use pb::controller_service_capability::{Rpc, Type, rpc};
        let r = pb::ControllerGetCapabilitiesResponse {
            capabilities: [rpc::Type::CreateDeleteVolume as i32, 99]
                .into_iter()
                .map(|t| pb::ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc { r#type: t })),
                })
                .collect(),
        };
        let item = controller_capabilities(&r);
        assert_eq!(
            item.text,
            "capability CREATE_DELETE_VOLUME\ncapability UNKNOWN_99"
        );
        assert_eq!(
            item.json,
            json!({"capabilities": ["CREATE_DELETE_VOLUME", "UNKNOWN_99"]})
        );

        use pb::plugin_capability as pc;
        let plugin = pb::GetPluginCapabilitiesResponse {
            capabilities: vec![
                pb::PluginCapability {
                    r#type: Some(pc::Type::Service(pc::Service {
                        r#type: pc::service::Type::ControllerService as i32,
                    })),
                },
                pb::PluginCapability {
                    r#type: Some(pc::Type::VolumeExpansion(pc::VolumeExpansion {
                        r#type: pc::volume_expansion::Type::Online as i32,
                    })),
                },
            ],
        };
        assert_eq!(
            plugin_capabilities(&plugin).json,
            json!({"capabilities": ["CONTROLLER_SERVICE", "VOLUME_EXPANSION_ONLINE"]})
        );
    }

    #[test]
    fn stats_item() {
        use pb::volume_usage::Unit;
        let r = pb::NodeGetVolumeStatsResponse {
            usage: vec![
                pb::VolumeUsage {
                    available: 1 << 30,
                    total: 2 << 30,
                    used: 1 << 30,
                    unit: Unit::Bytes as i32,
                },
                pb::VolumeUsage {
                    available: 90,
                    total: 100,
                    used: 10,
                    unit: Unit::Inodes as i32,
                },
            ],
            volume_condition: Some(pb::VolumeCondition {
                abnormal: false,
                message: "ok".into(),
            }),
        };
        let item = stats("hp-1", &r);
        assert_eq!(
            item.text,
            "stats hp-1  bytes used 1.0 GiB of 2.0 GiB (available 1.0 GiB)  \
             inodes used 10 of 100 (available 90)  healthy"
        );
        assert_eq!(item.json["usage"][0]["total"], json!(2147483648_i64));
        assert_eq!(item.json["usage"][1]["unit"], json!("INODES"));
        assert_eq!(item.json["volume_condition"]["abnormal"], json!(false));
    }

    #[test]
    fn done_items() {
        let item = done(
            "staged",
            &[("volume_id", "hp-1"), ("staging_target_path", "/s")],
        );
        assert_eq!(item.text, "staged hp-1  staging_target_path=/s");
        assert_eq!(
            item.json,
            json!({"action": "staged", "volume_id": "hp-1", "staging_target_path": "/s"})
        );
        let item = done("unpublished", &[("volume_id", "hp-1"), ("node_id", "")]);
        assert_eq!(item.text, "unpublished hp-1");
    }

    #[test]
    fn small_items() {
        let r = pb::ValidateVolumeCapabilitiesResponse {
            confirmed: None,
            message: "xfs is not supported".into(),
        };
        assert_eq!(
            validated("hp-1", &r).text,
            "not confirmed hp-1: xfs is not supported"
        );
        assert_eq!(validated("hp-1", &r).json["confirmed"], json!(false));
        assert_eq!(
            expanded("hp-1", 2 << 30, Some(true)).text,
            "expanded hp-1 to 2.0 GiB  node expansion required"
        );
        assert_eq!(
            expanded("hp-1", 2 << 30, None).json,
            json!({"volume_id": "hp-1", "capacity_bytes": 2147483648_i64})
        );
        assert_eq!(
            probe(&pb::ProbeResponse { ready: Some(true) }).json,
            json!({"ready": true})
        );
        assert_eq!(next_token("5").json, json!({"next_token": "5"}));
    }

    #[test]
    fn printer_writes_one_line_per_item() {
        let mut buffer = Vec::new();
        let mut printer = Printer::new(true, &mut buffer);
        printer.emit(next_token("a")).unwrap();
        printer.emit(next_token("b")).unwrap();
        assert_eq!(
            String::from_utf8(buffer).unwrap(),
            "{\"next_token\":\"a\"}\n{\"next_token\":\"b\"}\n"
        );
        let mut buffer = Vec::new();
        Printer::new(false, &mut buffer)
            .emit(next_token("a"))
            .unwrap();
        assert_eq!(String::from_utf8(buffer).unwrap(), "next-token a\n");
    }
}
