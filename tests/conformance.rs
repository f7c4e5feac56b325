//! CSI conformance suite: drives the real `multicsi` binary over its unix
//! socket, the way kubelet and the CSI sidecars do, and checks what the CSI
//! v1.12 specification demands of every RPC.
//!
//! Every test takes a [`harness::BackendUnderTest`]; the suite is
//! instantiated once per backend below, as `<backend>::<section>::<test>`.
//! Sections that need a real kernel (loop devices, mounts) are instantiated
//! only for backends whose node can run here. See docs/conformance.md.

#[path = "conformance/api.rs"]
mod api;
#[path = "conformance/civo.rs"]
mod civo_backend;
#[path = "conformance/cloudscale.rs"]
mod cloudscale_only;
#[path = "conformance/controller.rs"]
mod controller;
#[path = "conformance/crash.rs"]
mod crash;
#[path = "conformance/group.rs"]
mod group;
#[path = "conformance/harness.rs"]
mod harness;
#[path = "conformance/identity.rs"]
mod identity;
#[path = "conformance/metadata.rs"]
mod metadata;
#[path = "conformance/node.rs"]
mod node;
#[path = "conformance/observability.rs"]
mod observability;
#[path = "conformance/routing.rs"]
mod routing;
#[path = "conformance/soak.rs"]
mod soak;
#[path = "conformance/socket.rs"]
mod socket;
#[path = "conformance/state.rs"]
mod state;

/// One `#[test]` per listed test body, run against `$backend()`.
/// `section!(backend, name in module: [...])` takes the bodies from `module`.
macro_rules! section {
    ($backend:path, $section:ident: [$($test:ident),* $(,)?]) => {
        section!($backend, $section in $section: [$($test),*]);
    };
    ($backend:path, $section:ident in $module:ident: [$($test:ident),* $(,)?]) => {
        mod $section {
            $(
                #[test]
                fn $test() {
                    crate::harness::run(crate::$module::$test, $backend());
                }
            )*
        }
    };
}

/// Sections every backend runs: the gRPC surface, no host devices.
macro_rules! api_sections {
    ($backend:path) => {
        section!($backend, identity: [
            plugin_info_names_the_driver,
            plugin_capabilities_are_advertised,
            probe_reports_ready,
        ]);
        section!($backend, controller: [
            controller_capabilities_are_advertised,
            unadvertised_rpcs_are_unimplemented,
            missing_required_fields_are_invalid,
            hostile_identifiers_are_invalid,
            unknown_parameters_are_invalid,
            unknown_ids_are_not_found,
            deleting_unknown_ids_succeeds,
            create_and_delete_are_idempotent,
            incompatible_create_is_already_exists,
            capacity_ranges_are_honoured,
            validate_capabilities_confirms_only_supported,
            list_volumes_pages,
            list_volumes_paging_survives_changes,
            controller_publish_is_idempotent,
            snapshots_are_idempotent_and_listed,
            list_snapshots_pages,
            restore_and_clone_respect_source_size,
            controller_expand_is_idempotent,
            get_capacity_reports_space,
            create_volume_honours_topology,
            mkfs_parameters_are_checked_at_create,
            concurrent_calls_on_one_volume,
            parallel_calls_on_different_volumes,
        ]);
        section!($backend, socket: [
            socket_is_private,
            stale_socket_is_replaced,
            live_socket_is_not_taken_over,
            sigterm_exits_cleanly,
        ]);
        section!($backend, crash: [
            crash_during_create_volume,
        ]);
        section!($backend, group_controller in group: [
            group_controller_is_advertised_only_with_group_snapshots,
        ]);
        section!($backend, logs in observability: [
            control_characters_cannot_forge_log_lines,
        ]);
        section!($backend, metadata_service in metadata: [
            snapshot_metadata_is_served_only_where_advertised,
        ]);
    };
}

/// Node calls that must touch only their own volume, inside the kubelet
/// directory, and never lose data: every backend whose node runs here.
macro_rules! node_safety_section {
    ($backend:path) => {
        section!($backend, node_safety in node: [
            node_paths_outside_the_kubelet_dir_are_invalid,
            publish_from_another_volumes_staging_is_refused,
            unstage_while_published_is_failed_precondition,
            foreign_mounts_are_never_unmounted,
            second_publish_of_a_single_writer_volume_is_failed_precondition,
            block_data_is_never_formatted,
            luks_key_without_encryption_context_is_refused,
            node_input_errors_are_invalid_argument,
        ]);
    };
}

/// Sections that format and mount real devices: root only.
macro_rules! node_sections {
    ($backend:path) => {
        node_safety_section!($backend);
        section!($backend, node: [
            node_capabilities_and_info,
            node_missing_fields_are_invalid,
            node_hostile_input_is_invalid,
            node_unknown_volume_is_not_found,
            node_publish_requires_staging,
            node_cycle_ext4,
            node_cycle_xfs,
            node_cycle_btrfs,
            stage_with_another_filesystem_is_already_exists,
            read_only_publish_refuses_writes,
            raw_block_round_trip,
            read_only_block_publish_refuses_writes,
            expand_ext4_online,
            expand_xfs_online,
            expand_btrfs_online,
            restore_ext4_keeps_snapshot_data,
            restore_xfs_keeps_snapshot_data,
            clone_keeps_data,
            stats_report_abnormal_when_unmounted,
            concurrent_node_calls_on_one_volume,
            symlinked_paths_are_invalid,
            symlinked_kubelet_root_is_followed,
            publish_onto_a_foreign_mount_is_already_exists,
            stage_onto_a_foreign_mount_is_already_exists,
            mkfs_options_and_mount_flags_reach_the_filesystem,
            luks_without_key_or_dm_crypt_touches_nothing,
        ]);
        section!($backend, node_crash in crash: [
            crash_during_node_stage,
        ]);
        section!($backend, observability: [
            secrets_stay_out_of_logs_and_metrics,
        ]);
    };
}

/// The soak (tests/conformance/soak.rs) and a kill -9 during creates, for a
/// cloud backend whose emulator injects faults (5xx, 429).
#[allow(unused_macros)] // instantiated by the cloud backends
macro_rules! soak_sections {
    ($backend:path) => {
        section!($backend, soak: [soak_cycles]);
        section!($backend, soak_crash in crash: [crash_during_create_volume]);
    };
}

mod hostpath {
    api_sections!(crate::harness::BackendUnderTest::hostpath);
    section!(crate::harness::BackendUnderTest::hostpath, soak: [soak_cycles]);
    node_sections!(crate::harness::BackendUnderTest::hostpath);
    // The hostpath controller copies images on the node's host itself, so
    // it can quiesce a mounted volume for the copy; and only hostpath grows
    // a raw block volume online, read-only views included.
    section!(crate::harness::BackendUnderTest::hostpath, hostpath_node in node: [
        snapshot_of_a_mounted_volume_holds_unflushed_writes,
        expand_grows_read_only_block_views,
        unknown_volumes_are_not_found_on_every_node_call,
        encryption_comes_from_the_hostpath_record,
        failed_stage_leaves_no_loop_device,
        a_luks_device_is_never_formatted_in_plaintext,
        unsigned_data_is_never_formatted,
    ]);
    section!(crate::harness::BackendUnderTest::hostpath, hostpath_controller in controller: [
        volumes_keep_what_they_were_made_as,
        publish_beyond_the_node_limit_is_resource_exhausted,
    ]);
    section!(crate::harness::BackendUnderTest::hostpath, state: [
        a_second_server_on_the_state_dir_is_refused,
        an_unknown_image_is_kept_aside,
        a_flipped_byte_in_the_last_batch_is_refused,
        a_flipped_byte_in_the_middle_is_refused,
        damage_in_the_compacted_batch_is_refused,
        a_truncated_journal_is_refused,
        a_missing_journal_with_images_is_refused,
        space_is_honest_on_a_small_state_disk,
    ]);
    section!(crate::harness::BackendUnderTest::hostpath, metadata: [
        delta_is_exactly_the_blocks_written_between,
        paging_and_continuation_are_exact,
        fixed_length_blocks_cover_exactly_the_changes,
        metadata_errors_follow_the_spec,
        delta_of_thousands_of_scattered_blocks_is_exact,
        shared_blocks_are_skipped_on_a_reflink_filesystem,
    ]);
    section!(crate::harness::BackendUnderTest::hostpath, node_snapshot_crash in crash: [
        crash_during_snapshot_of_a_mounted_volume,
    ]);
    section!(crate::harness::BackendUnderTest::hostpath, group: [
        group_snapshot_input_errors,
        group_snapshots_are_idempotent_and_listed,
    ]);
    section!(crate::harness::BackendUnderTest::hostpath, group_node in group: [
        group_snapshot_of_mounted_volumes_is_one_point_in_time,
        crash_during_group_snapshot,
    ]);
}

/// Civo against its emulator, volume snapshots on. Civo has no clones and
/// resizes detached volumes only, so the clone and online expansion tests
/// are not instantiated; the offline expansion test is Civo's own.
mod civo {
    api_sections!(crate::harness::BackendUnderTest::civo);
    section!(crate::harness::BackendUnderTest::civo, node: [
        node_capabilities_and_info,
        node_missing_fields_are_invalid,
        node_hostile_input_is_invalid,
        node_unknown_volume_is_not_found,
        node_publish_requires_staging,
        node_cycle_ext4,
        node_cycle_xfs,
        node_cycle_btrfs,
        stage_with_another_filesystem_is_already_exists,
        read_only_publish_refuses_writes,
        raw_block_round_trip,
        read_only_block_publish_refuses_writes,
        restore_ext4_keeps_snapshot_data,
        restore_xfs_keeps_snapshot_data,
        stats_report_abnormal_when_unmounted,
        concurrent_node_calls_on_one_volume,
        symlinked_paths_are_invalid,
        symlinked_kubelet_root_is_followed,
        publish_onto_a_foreign_mount_is_already_exists,
        stage_onto_a_foreign_mount_is_already_exists,
        mkfs_options_and_mount_flags_reach_the_filesystem,
        luks_without_key_or_dm_crypt_touches_nothing,
    ]);
    node_safety_section!(crate::harness::BackendUnderTest::civo);
    section!(crate::harness::BackendUnderTest::civo, node_crash in crash: [
        crash_during_node_stage,
    ]);
    section!(crate::harness::BackendUnderTest::civo, observability: [
        secrets_stay_out_of_logs_and_metrics,
    ]);
    section!(crate::harness::BackendUnderTest::civo, civo_own in civo_backend: [
        node_identity_sources,
        one_node_id_for_every_backend,
        offline_expansion_keeps_data,
        quota_limits_creates,
        snapshots_need_the_setting,
    ]);
    soak_sections!(crate::harness::BackendUnderTest::civo_soak);
    mod with_hostpath {
        section!(crate::harness::BackendUnderTest::civo_with_hostpath, routing: [
            only_shared_capabilities_are_advertised,
        ]);
    }
}

mod cloudscale {
    api_sections!(crate::harness::BackendUnderTest::cloudscale);
    node_sections!(crate::harness::BackendUnderTest::cloudscale);
    section!(crate::harness::BackendUnderTest::cloudscale, made_as in controller: [
        volumes_keep_what_they_were_made_as,
    ]);
    section!(crate::harness::BackendUnderTest::cloudscale, specific in cloudscale_only: [
        volume_types_and_size_steps,
        restore_inherits_type_and_zone_then_grows,
        a_volume_attaches_to_one_server,
        node_identity_and_volume_limit,
        a_duplicate_left_by_a_crash_is_resolved,
        a_clone_leaves_no_snapshot_behind,
        a_node_needs_no_token,
        volumes_carry_their_pvc_and_class_tags,
    ]);
    mod faults {
        soak_sections!(crate::harness::BackendUnderTest::cloudscale_under_faults);
    }
    mod with_hostpath {
        section!(crate::harness::BackendUnderTest::cloudscale_with_hostpath, routing: [
            two_backends_route_by_id,
            capacity_follows_the_storage_class,
            a_node_plugin_serves_only_its_own_backends,
        ]);
        section!(crate::harness::BackendUnderTest::cloudscale_with_hostpath, group_routing in group: [
            group_snapshots_take_one_capable_backend,
        ]);
        section!(crate::harness::BackendUnderTest::cloudscale_with_hostpath, routed_metadata in metadata: [
            metadata_is_routed_to_the_backend_that_computes_it,
        ]);
    }
}

mod packet {
    api_sections!(crate::harness::BackendUnderTest::packet);
    section!(crate::harness::BackendUnderTest::packet, made_as in controller: [
        volumes_keep_what_they_were_made_as,
    ]);
}

mod packet_soak {
    soak_sections!(crate::harness::BackendUnderTest::packet_soak);
}

mod packet_devices {
    node_sections!(crate::harness::BackendUnderTest::packet_with_devices);
}
