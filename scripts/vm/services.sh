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
# functions are then start_iscsi_target, start_iscsid, start_multipathd,
# start_all, stop_all, plus the helpers _svc_wait SECONDS COMMAND... (retry until
# success) and _svc_sleep SECONDS (sleep without an exec).

VM_SERVICES_LOG=${VM_SERVICES_LOG:-/run/vm-services}

# Bash-only sleep: under TCG every exec costs a few tenths of a second.
_svc_sleep() {
    [[ -n ${_svc_sleep_fd:-} ]] || exec {_svc_sleep_fd}<> <(:)
    read -rt "$1" -u "$_svc_sleep_fd" || :
}

_svc_wait() { # SECONDS COMMAND...: retry COMMAND every 0.25 s until it succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "services.sh: timed out waiting for: $*" >&2
            return 1
        fi
        _svc_sleep 0.25
    done
}

_svc_guard() {
    if [[ ${MULTICSI_IN_VM:-} != 1 ]]; then
        echo "services.sh: only for use inside the VM (scripts/vm-test.sh)" >&2
        return 2
    fi
    mkdir -p "$VM_SERVICES_LOG"
}

# Is a unix socket with this path (or @abstract name) bound? Bash only: no exec.
_svc_socket() {
    local line
    while IFS= read -r line; do
        [[ $line == *" $1" ]] && return 0
    done </proc/net/unix
    return 1
}

_tgt_up() { _svc_socket /var/run/tgtd/socket.0 || _svc_socket /run/tgtd/socket.0; }

start_iscsi_target() {
    _svc_guard || return
    _tgt_up && return 0
    mkdir -p /run/tgtd
    setsid -f tgtd -f >>"$VM_SERVICES_LOG/tgtd.log" 2>&1 </dev/null
    _svc_wait 10 _tgt_up && _svc_wait 10 tgtadm --lld iscsi --op show --mode sys
}

# iscsiadm talks to iscsid over this abstract socket.
_iscsid_up() { _svc_socket @ISCSIADM_ABSTRACT_NAMESPACE; }

start_iscsid() {
    _svc_guard || return
    [[ -s /etc/iscsi/initiatorname.iscsi ]] ||
        echo "InitiatorName=$(iscsi-iname)" >/etc/iscsi/initiatorname.iscsi
    if ! _iscsid_up; then
        [[ -d /sys/module/iscsi_tcp ]] || modprobe -a iscsi_tcp
        setsid -f iscsid -f >>"$VM_SERVICES_LOG/iscsid.log" 2>&1 </dev/null
    fi
    _svc_wait 10 _iscsid_up
}

_multipathd_listening() { _svc_socket @/org/kernel/linux/storage/multipathd; }
_multipathd_ready() {
    local out
    out=$(multipathd show daemon 2>/dev/null) && [[ $out == *running* || $out == *idle* ]]
}

start_multipathd() {
    _svc_guard || return
    # multipath does not load its kernel target itself.
    [[ -d /sys/module/dm_multipath && -d /sys/module/scsi_dh_alua ]] ||
        modprobe -a dm_multipath scsi_dh_alua
    if [[ ! -e /etc/multipath.conf ]]; then
        cat >/etc/multipath.conf <<'EOF'
defaults {
    user_friendly_names yes
    find_multipaths no
}
EOF
    fi
    if ! _multipathd_listening; then
        setsid -f multipathd -d -s >>"$VM_SERVICES_LOG/multipathd.log" 2>&1 </dev/null
    fi
    _svc_wait 10 _multipathd_listening && _svc_wait 10 _multipathd_ready
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
