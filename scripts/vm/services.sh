#!/bin/bash
# Storage daemons for tests inside the VM of scripts/vm-test.sh.
#
#   scripts/vm/services.sh start-iscsi-target   tgtd (iSCSI target on 0.0.0.0:3260)
#   scripts/vm/services.sh start-iscsid         iscsid (open-iscsi initiator daemon)
#   scripts/vm/services.sh start-multipathd     multipathd (writes a default
#                                               /etc/multipath.conf if there is none)
#   scripts/vm/services.sh start-all            all three
#   scripts/vm/services.sh stop-all             flush multipath maps, log out of
#                                               iSCSI sessions, stop the daemons
#
# Each start is idempotent and returns once the daemon answers. Daemon output is
# in $VM_SERVICES_LOG (default /run/vm-services). Can also be sourced: the
# functions are then start_iscsi_target, start_iscsid, start_multipathd, stop_all.

VM_SERVICES_LOG=${VM_SERVICES_LOG:-/run/vm-services}

_svc_wait() { # SECONDS COMMAND...: retry COMMAND every 0.1 s
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "services.sh: timed out waiting for: $*" >&2
            return 1
        fi
        sleep 0.1
    done
}

_svc_guard() {
    if [[ ${MULTICSI_IN_VM:-} != 1 ]]; then
        echo "services.sh: only for use inside the VM (scripts/vm-test.sh)" >&2
        return 2
    fi
    mkdir -p "$VM_SERVICES_LOG"
}

_tgt_up() { tgtadm --lld iscsi --op show --mode sys; }

start_iscsi_target() {
    _svc_guard || return
    _tgt_up >/dev/null 2>&1 && return 0
    mkdir -p /run/tgtd
    setsid -f tgtd -f >>"$VM_SERVICES_LOG/tgtd.log" 2>&1 </dev/null
    _svc_wait 10 _tgt_up
}

# iscsiadm exits 21 (no sessions) or 0 once it can talk to iscsid.
_iscsid_up() {
    local rc=0
    iscsiadm -m session >/dev/null 2>&1 || rc=$?
    ((rc == 0 || rc == 21))
}

start_iscsid() {
    _svc_guard || return
    [[ -s /etc/iscsi/initiatorname.iscsi ]] ||
        echo "InitiatorName=$(iscsi-iname)" >/etc/iscsi/initiatorname.iscsi
    if ! pgrep -x iscsid >/dev/null; then
        modprobe -a iscsi_tcp
        setsid -f iscsid -f >>"$VM_SERVICES_LOG/iscsid.log" 2>&1 </dev/null
    fi
    _svc_wait 10 _iscsid_up
}

_multipathd_up() { multipathd show daemon | grep -Eq 'running|idle'; }

start_multipathd() {
    _svc_guard || return
    # multipath does not load its kernel target itself.
    modprobe -a dm_multipath scsi_dh_alua
    if [[ ! -e /etc/multipath.conf ]]; then
        cat >/etc/multipath.conf <<'EOF'
defaults {
    user_friendly_names yes
    find_multipaths no
}
EOF
    fi
    if ! pgrep -x multipathd >/dev/null; then
        setsid -f multipathd -d -s >>"$VM_SERVICES_LOG/multipathd.log" 2>&1 </dev/null
    fi
    _svc_wait 10 _multipathd_up
}

start_all() {
    start_iscsi_target && start_iscsid && start_multipathd
}

stop_all() {
    _svc_guard || return
    multipath -F >/dev/null 2>&1
    iscsiadm -m node --logoutall=all >/dev/null 2>&1
    local d
    for d in multipathd iscsid tgtd; do
        pkill -x "$d" 2>/dev/null
    done
    return 0
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    case ${1:-} in
        start-iscsi-target) start_iscsi_target ;;
        start-iscsid) start_iscsid ;;
        start-multipathd) start_multipathd ;;
        start-all) start_all ;;
        stop-all) stop_all ;;
        *)
            sed -n '2,15s/^# \{0,1\}//p' "$0" >&2
            exit 2
            ;;
    esac
fi
