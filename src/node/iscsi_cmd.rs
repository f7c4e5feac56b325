//! `multicsi iscsi attach|detach`: the node's iSCSI steps by hand, for an
//! operator checking a node and for the VM test suite. Prints the device.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::iscsi::{self, IscsiHost, IscsiVolume};

#[derive(Args, Debug)]
pub struct IscsiArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Log in on every portal and print the multipath map's device.
    Attach(VolumeArgs),
    /// Flush the multipath map and log out of every portal.
    Detach(VolumeArgs),
}

#[derive(Args, Debug)]
struct VolumeArgs {
    /// The target's IQN.
    #[arg(long)]
    target_iqn: String,
    /// A portal, IP:PORT; repeat for every portal.
    #[arg(long = "portal", required = true)]
    portals: Vec<String>,
    /// The volume's LUN.
    #[arg(long, default_value_t = 0)]
    lun: u32,
    /// The multipath map's name (/dev/mapper/ALIAS).
    #[arg(long)]
    alias: String,
    /// This node's initiator IQN.
    #[arg(long)]
    initiator_iqn: String,
    /// The initiator name file.
    #[arg(long, default_value = "/etc/iscsi/initiatorname.iscsi")]
    initiator_file: std::path::PathBuf,
    /// Seconds to wait for the disks and the map.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

pub fn run(args: IscsiArgs) -> ExitCode {
    let (Action::Attach(v) | Action::Detach(v)) = &args.action;
    let host = IscsiHost {
        initiator_file: v.initiator_file.clone(),
        device_timeout: Duration::from_secs(v.timeout),
        ..Default::default()
    };
    let volume = IscsiVolume {
        target_iqn: v.target_iqn.clone(),
        portals: v.portals.clone(),
        lun: v.lun,
        alias: v.alias.clone(),
        initiator_iqn: v.initiator_iqn.clone(),
    };
    let result = match &args.action {
        Action::Attach(_) => iscsi::attach(&host, &volume).map(|device| {
            println!("{}", device.display());
        }),
        Action::Detach(_) => iscsi::detach(&host, &volume),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("multicsi iscsi: {e}");
            ExitCode::FAILURE
        }
    }
}
