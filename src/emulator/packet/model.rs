//! The emulated Packet project: its catalog (plans, facilities, devices),
//! its volumes and attachments, and their JSON as the API writes it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::cloud::timestamp;

/// A storage plan.
pub struct Plan {
    pub id: &'static str,
    pub slug: &'static str,
    pub name: &'static str,
}

/// The block storage plans (ids as the API publishes them).
pub const PLANS: &[Plan] = &[
    Plan {
        id: "87728148-3155-4992-a730-8d1e6aca8a32",
        slug: "storage_1",
        name: "Standard",
    },
    Plan {
        id: "d6570cfb-38fa-4467-92b3-e45d059bb249",
        slug: "storage_2",
        name: "Performance",
    },
];

/// A facility (data centre).
pub struct Facility {
    pub id: &'static str,
    pub code: &'static str,
    pub name: &'static str,
    pub features: &'static [&'static str],
}

pub const FACILITIES: &[Facility] = &[
    Facility {
        id: "e1e9c52e-a0bc-4117-b996-0fc94843ea09",
        code: "ewr1",
        name: "Parsippany, NJ",
        features: &["baremetal", "storage", "global_ipv4"],
    },
    Facility {
        id: "2b70eb8f-fa18-47c0-aba7-222a842362fd",
        code: "sjc1",
        name: "Sunnyvale, CA",
        features: &["baremetal", "storage"],
    },
    Facility {
        id: "8e6470b3-b75e-47d1-bb93-45b225750975",
        code: "nrt1",
        name: "Tokyo, JP",
        features: &["baremetal"],
    },
];

/// A server of the project.
pub struct Device {
    pub id: &'static str,
    pub hostname: &'static str,
    pub iqn: &'static str,
    pub facility: &'static str,
}

/// The server this emulator runs on: its metadata is served at
/// `/metadata`, and volumes attached to it appear as block devices.
pub const HOST: Device = Device {
    id: "5d0a1c7e-3f4b-4e8a-9c21-7b6e2f1d0a01",
    hostname: "emulated-node-1",
    iqn: "iqn.2026-11.net.packet:device.5d0a1c7e",
    facility: "ewr1",
};

/// A second server of the project, elsewhere (no devices appear here).
pub const PEER: Device = Device {
    id: "b3f1e2d4-6a7c-4b8e-9f01-23456789abcd",
    hostname: "emulated-node-2",
    iqn: "iqn.2026-11.net.packet:device.b3f1e2d4",
    facility: "ewr1",
};

pub const DEVICES: &[&Device] = &[&HOST, &PEER];

pub fn plan(id_or_slug: &str) -> Option<&'static Plan> {
    PLANS
        .iter()
        .find(|p| p.id == id_or_slug || p.slug == id_or_slug)
}

pub fn facility(id_or_code: &str) -> Option<&'static Facility> {
    FACILITIES
        .iter()
        .find(|f| f.id == id_or_code || f.code == id_or_code)
}

pub fn device(id: &str) -> Option<&'static Device> {
    DEVICES.iter().copied().find(|d| d.id == id)
}

/// A volume of the project.
pub struct Volume {
    pub id: String,
    pub project: String,
    pub description: Option<String>,
    /// GB.
    pub size: u64,
    pub plan: &'static Plan,
    pub facility: &'static Facility,
    pub billing_cycle: String,
    /// A locked volume cannot be deleted.
    pub locked: bool,
    pub created: Instant,
    pub created_at: String,
}

impl Volume {
    /// The name the API gives a volume: `volume-` and the first eight hex
    /// digits of its id.
    pub fn name(&self) -> String {
        format!("volume-{}", &self.id[..8])
    }

    /// `queued`, then `provisioning`, then `active`, each step taking half
    /// of `transition`.
    pub fn state(&self, transition: Duration) -> &'static str {
        let age = self.created.elapsed();
        if age >= transition {
            "active"
        } else if age >= transition / 2 {
            "provisioning"
        } else {
            "queued"
        }
    }

    /// The target IQN of the volume's iSCSI export.
    pub fn target_iqn(&self) -> String {
        let hex: String = self.id.chars().filter(|c| *c != '-').take(16).collect();
        format!("iqn.2013-05.com.daterainc:tc:01:sn:{hex}")
    }

    /// The two portal addresses of the volume's export.
    pub fn portals(&self) -> Vec<String> {
        let byte = |i: usize| u8::from_str_radix(&self.id[i..i + 2], 16).unwrap_or(1);
        vec![
            format!("10.144.35.{}", byte(0).max(1)),
            format!("10.144.51.{}", byte(2).max(1)),
        ]
    }
}

/// An attachment of a volume to a device.
pub struct Attachment {
    pub id: String,
    pub volume_id: String,
    pub device_id: String,
}

/// Everything the project holds.
#[derive(Default)]
pub struct Project {
    pub volumes: BTreeMap<String, Volume>,
    pub attachments: BTreeMap<String, Attachment>,
}

impl Project {
    pub fn attachments_of(&self, volume_id: &str) -> Vec<&Attachment> {
        self.attachments
            .values()
            .filter(|a| a.volume_id == volume_id)
            .collect()
    }

    pub fn volume_json(&self, volume: &Volume, transition: Duration) -> Value {
        let attachments: Vec<Value> = self
            .attachments_of(&volume.id)
            .into_iter()
            .map(attachment_json)
            .collect();
        json!({
            "id": volume.id,
            "name": volume.name(),
            "description": volume.description,
            "size": volume.size,
            "locked": volume.locked,
            "billing_cycle": volume.billing_cycle,
            "state": volume.state(transition),
            "created_at": volume.created_at,
            "updated_at": volume.created_at,
            "project": { "href": format!("/projects/{}", volume.project) },
            "facility": { "href": format!("/facilities/{}", volume.facility.id) },
            "plan": { "id": volume.plan.id, "slug": volume.plan.slug, "name": volume.plan.name },
            "snapshot_policies": [],
            "attachments": attachments,
            "href": format!("/storage/{}", volume.id),
        })
    }

    /// The metadata service's answer for `device`: only the volumes
    /// attached to it are listed.
    pub fn metadata_json(&self, device: &Device) -> Value {
        let volumes: Vec<Value> = self
            .attachments
            .values()
            .filter(|a| a.device_id == device.id)
            .filter_map(|a| self.volumes.get(&a.volume_id))
            .map(|v| {
                json!({
                    "ips": v.portals(),
                    "name": v.name(),
                    "capacity": { "size": v.size.to_string(), "unit": "gb" },
                    "iqn": v.target_iqn(),
                })
            })
            .collect();
        json!({
            "id": device.id,
            "hostname": device.hostname,
            "iqn": device.iqn,
            "plan": "c3.small.x86",
            "facility": device.facility,
            "volumes": volumes,
        })
    }
}

pub fn attachment_json(a: &Attachment) -> Value {
    json!({
        "id": a.id,
        "href": format!("/storage/attachments/{}", a.id),
        "volume": { "id": a.volume_id, "href": format!("/storage/{}", a.volume_id) },
        "device": { "id": a.device_id, "href": format!("/devices/{}", a.device_id) },
    })
}

pub fn facility_json(f: &Facility) -> Value {
    json!({
        "id": f.id,
        "code": f.code,
        "name": f.name,
        "features": f.features,
        "address": null,
        "href": format!("/facilities/{}", f.id),
    })
}

pub fn now() -> String {
    timestamp::format_seconds(SystemTime::now())
}
