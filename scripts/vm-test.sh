#!/usr/bin/env bash
# Run a command as root inside a throw-away QEMU VM that boots Debian's kernel
# with the host's own root filesystem (read-only, overlaid with tmpfs).
#
# The VM has what the host kernel lacks: device-mapper (dm-crypt, multipath),
# the iSCSI initiator, tgt, udev. See docs/vm-harness.md.
#
#   scripts/vm-test.sh [OPTIONS] [--] COMMAND [ARGS...]
#   scripts/vm-test.sh --self-test
#
# Exit status: the command's own, 124 on timeout, 125 when the VM itself failed.
set -euo pipefail

readonly ME=vm-test
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
VM_DIR=$REPO_ROOT/scripts/vm
CACHE_ROOT=$REPO_ROOT/target/vm

# What the VM needs on the host comes from the package list's `vm` job.
# shellcheck source=scripts/lib/common.sh
source "$SCRIPT_DIR/lib/common.sh"
# Modules the first stage loads from the initramfs (with their dependencies):
# what it takes to reach the root filesystem, configfs, and the storage modules
# the tests need (block devices, dm-crypt with AES-NI/XTS, multipath, iSCSI,
# SCSI disks, ext4, xfs). Loading them from RAM is much faster than the kernel
# calling modprobe over 9p later.
STAGE1_MODULES=(virtio_pci 9pnet_virtio 9p overlay configfs
                virtio_blk loop dm_mod dm_crypt aesni_intel xts ecb
                dm_multipath dm_service_time dm_round_robin scsi_dh_alua
                iscsi_tcp sd_mod ext4 xfs)
# Variables passed into the guest even when not listed in VM_PASS_ENV.
DEFAULT_PASS_ENV=(RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS RUST_TEST_NOCAPTURE CARGO_MANIFEST_DIR)

TIMEOUT=${VM_TIMEOUT:-600}
MEM=${VM_MEM:-2048}
# One vCPU unless the host has cores to spare: on a 2-core host a second vCPU
# costs ~40% more CPU time (cross-CPU RCU and IPIs under TCG) for no speed-up.
HOST_CPUS=$(nproc 2>/dev/null || echo 1)
if ((HOST_CPUS > 2)); then DEFAULT_SMP=2; else DEFAULT_SMP=1; fi
SMP=${VM_SMP:-$DEFAULT_SMP}
KEEP=0
SELF_TEST=0
DISKS=()
CMD=()

usage() {
    cat <<EOF
usage: scripts/vm-test.sh [OPTIONS] [--] COMMAND [ARGS...]
       scripts/vm-test.sh --self-test

Boots a QEMU VM with Debian's kernel and the host's root filesystem (read-only
lower layer, tmpfs upper layer) and runs COMMAND there as root, in the current
directory. Its stdout and stderr are streamed to this stdout; the exit status
is the command's (124: timeout, 125: the VM failed).

options:
  --timeout SECS   kill the VM after SECS seconds (default $TIMEOUT, env VM_TIMEOUT)
  --disk SIZE      attach an empty raw virtio disk of SIZE (truncate syntax, e.g. 1G);
                   repeatable; the guest sees /dev/vda, /dev/vdb, ... (\$VM_DISKS)
  --mem MIB        guest memory (default $MEM, env VM_MEM)
  --smp N          guest vCPUs (default $SMP: 2 if the host has more than 2 cores, env VM_SMP)
  --keep           keep the run folder (console log, disk images) after success
  --self-test      run the harness self-test (LUKS2, dm-crypt resize, iSCSI, multipath)
  -h, --help       this text

inside the guest:
  MULTICSI_IN_VM=1, VM_RUN_DIR (writable folder shared with the host),
  VM_DISKS, and the variables named in VM_PASS_ENV (space separated) plus
  ${DEFAULT_PASS_ENV[*]}. Daemons: scripts/vm/services.sh.
environment:
  VM_ACCEL=kvm|tcg  force the accelerator (default: kvm only if /dev/kvm is real KVM)
  VM_KERNEL_VERSION kernel to boot (default: newest /boot/vmlinuz-* with modules)
  VM_APPEND         extra kernel parameters (e.g. "loglevel=7" for a verbose console log)
EOF
}

log() { printf '%s: %s\n' "$ME" "$*" >&2; }
die() { log "error: $*"; exit 125; }

while (($#)); do
    case $1 in
        --timeout) TIMEOUT=${2:?--timeout needs SECS}; shift 2 ;;
        --timeout=*) TIMEOUT=${1#*=}; shift ;;
        --disk) DISKS+=("${2:?--disk needs SIZE}"); shift 2 ;;
        --disk=*) DISKS+=("${1#*=}"); shift ;;
        --mem) MEM=${2:?--mem needs MIB}; shift 2 ;;
        --smp) SMP=${2:?--smp needs N}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --self-test) SELF_TEST=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; CMD=("$@"); break ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) CMD=("$@"); break ;;   # lets the script serve as a cargo runner
    esac
done
[[ $TIMEOUT =~ ^[0-9]+$ && $TIMEOUT -gt 0 ]] || die "--timeout wants a positive number of seconds"
if ((SELF_TEST)); then
    ((${#CMD[@]} == 0)) || die "--self-test takes no command"
    CMD=(bash "$VM_DIR/self-test.sh")
fi
((${#CMD[@]})) || { usage >&2; exit 2; }
[[ ${MULTICSI_IN_VM:-} != 1 ]] || die "already inside the VM"
[[ $(id -u) == 0 ]] || die "must run as root (package installation, loop devices and dm inside the VM)"

# ---------------------------------------------------------------- cleanup
QEMU_PID= RUN_DIR= PRIV_TMP= SUCCESS=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    # timeout(1) forwards signals, but make sure QEMU itself is gone too.
    if [[ -n $RUN_DIR && -s $RUN_DIR/vm/qemu.pid ]]; then
        local qp; qp=$(<"$RUN_DIR/vm/qemu.pid")
        if [[ $qp =~ ^[0-9]+$ ]] && kill -0 "$qp" 2>/dev/null; then
            kill -KILL "$qp" 2>/dev/null || true
        fi
    fi
    [[ -z $PRIV_TMP ]] || rm -rf -- "$PRIV_TMP"
    if [[ -n $RUN_DIR && -d $RUN_DIR ]]; then
        if ((SUCCESS && !KEEP)); then
            rm -rf -- "$RUN_DIR"
        else
            rm -f -- "$RUN_DIR"/vm/disk*.img
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

mkdir -p "$CACHE_ROOT"
# Private temporary folders of runs that were killed outright.
find "$CACHE_ROOT" -maxdepth 1 -name 'tmp.*' -mmin +720 -exec rm -rf -- {} + 2>/dev/null || true
PRIV_TMP=$(mktemp -d "$CACHE_ROOT/tmp.XXXXXX")
export TMPDIR=$PRIV_TMP

# ---------------------------------------------------------------- packages
ensure_job_packages vm || die "package installation failed"

# ---------------------------------------------------------------- kernel + initramfs cache
pick_kernel() {
    if [[ -n ${VM_KERNEL_VERSION:-} ]]; then
        printf '%s\n' "$VM_KERNEL_VERSION"
        return
    fi
    local f v
    for f in /boot/vmlinuz-*; do
        [[ -e $f ]] || continue
        v=${f#/boot/vmlinuz-}
        if [[ -d /lib/modules/$v/kernel ]]; then printf '%s\n' "$v"; fi
    done | sort -V | tail -n 1
}
KVER=$(pick_kernel)
[[ -n $KVER && -r /boot/vmlinuz-$KVER && -d /lib/modules/$KVER ]] || die "no usable kernel in /boot (linux-image-amd64)"
KCACHE=$CACHE_ROOT/$KVER
mkdir -p "$KCACHE"

is_elf() { [[ $(head -c 4 -- "$1" 2>/dev/null | od -An -tx1 | tr -d ' \n') == 7f454c46 ]]; }

# The uncompressed kernel boots ~3 s faster under TCG than the bzImage.
build_vmlinux() {
    local src=/boot/vmlinuz-$KVER out=$KCACHE/vmlinux off
    [[ -s $out ]] && return 0
    log "extracting vmlinux from $src"
    while read -r off; do
        tail -c "+$((off + 1))" -- "$src" | xz -dc >"$out.tmp" 2>/dev/null || true
        if is_elf "$out.tmp"; then
            mv -f "$out.tmp" "$out"
            return 0
        fi
    done < <(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' -- "$src" | cut -d: -f1)
    rm -f "$out.tmp"
    log "no xz payload found, booting the compressed kernel"
    cp -- "$src" "$out.tmp" && mv -f "$out.tmp" "$out"
}

# Module file paths (in load order) for the first stage, from modprobe's dependency list.
stage1_module_files() {
    modprobe -S "$KVER" --show-depends -a "${STAGE1_MODULES[@]}" |
        awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
}

build_initramfs() {
    local key out work f name n=0
    key=$( { cat "$VM_DIR/init-stage1"; printf '%s\n' "${STAGE1_MODULES[@]}"; } | sha256sum | cut -c1-12)
    out=$KCACHE/initramfs-$key.cpio
    INITRAMFS=$out
    [[ -s $out ]] && return 0
    log "building initramfs for $KVER"
    work=$(mktemp -d "$PRIV_TMP/initramfs.XXXXXX")
    mkdir -p "$work"/{bin,dev,proc,sys,lower,upper,newroot,modules}
    cp /bin/busybox "$work/bin/busybox"
    install -m 755 "$VM_DIR/init-stage1" "$work/init"
    mknod -m 600 "$work/dev/console" c 5 1
    mknod -m 666 "$work/dev/null" c 1 3
    : >"$work/modules/order"
    while read -r f; do
        name=$(printf '%02d-%s' "$n" "$(basename -- "$f")")
        n=$((n + 1))
        case $f in
            *.ko.xz) name=${name%.xz}; xz -dc -- "$f" >"$work/modules/$name" ;;
            *.ko.zst) name=${name%.zst}; zstd -qdc -- "$f" >"$work/modules/$name" ;;
            *.ko.gz) name=${name%.gz}; gzip -dc -- "$f" >"$work/modules/$name" ;;
            *) cp -- "$f" "$work/modules/$name" ;;
        esac
        printf '%s\n' "$name" >>"$work/modules/order"
    done < <(stage1_module_files)
    ((n > 0)) || die "modprobe found no modules for ${STAGE1_MODULES[*]}"
    (cd "$work" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$out.tmp"
    mv -f "$out.tmp" "$out"
    # Older initramfs builds of this kernel are of no use any more.
    find "$KCACHE" -maxdepth 1 -name 'initramfs-*.cpio' ! -name "initramfs-$key.cpio" -delete
}

exec 9>"$KCACHE/.lock"
flock 9
build_vmlinux
build_initramfs
flock -u 9
exec 9>&-

QEMU_BIOS=()
[[ -r /usr/share/qemu/qboot.rom ]] && QEMU_BIOS=(-bios /usr/share/qemu/qboot.rom)

# /dev/kvm may be a PVM hypervisor (kvm_pvm) that cannot run an unmodified kernel.
real_kvm() {
    [[ -c /dev/kvm && -r /dev/kvm && -w /dev/kvm ]] || return 1
    [[ ! -d /sys/module/kvm_pvm ]] || return 1
    [[ -d /sys/module/kvm_intel || -d /sys/module/kvm_amd ]]
}
case ${VM_ACCEL:-auto} in
    kvm) ACCEL=kvm ;;
    tcg) ACCEL=tcg ;;
    auto) if real_kvm; then ACCEL=kvm; else ACCEL=tcg; fi ;;
    *) die "VM_ACCEL must be kvm, tcg or auto" ;;
esac
if [[ $ACCEL == kvm ]]; then
    ACCEL_ARGS=(-accel kvm -cpu host)
else
    # -cpu max gives AES-NI (fast dm-crypt) under TCG.
    ACCEL_ARGS=(-accel tcg,thread=multi,tb-size=512 -cpu max)
fi

# ---------------------------------------------------------------- run folder
mkdir -p "$CACHE_ROOT/runs"
# Keep the folders of the last few failed runs only.
find "$CACHE_ROOT/runs" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %p\n' 2>/dev/null |
    sort -rn | tail -n +10 | cut -d' ' -f2- | while read -r d; do rm -rf -- "$d"; done
RUN_DIR=$(mktemp -d "$CACHE_ROOT/runs/$(date +%Y%m%d-%H%M%S).XXXXXX")
chmod 755 "$RUN_DIR"
mkdir -p "$RUN_DIR/vm"
safe_path='^[A-Za-z0-9_./+@:-]+$'
[[ $RUN_DIR =~ $safe_path && $VM_DIR =~ $safe_path ]] ||
    die "the repository path must not contain spaces or special characters: $REPO_ROOT"

DRIVE_ARGS=() GUEST_DISKS=()
letters=abcdefghijklmnopqrstuvwxyz
for i in "${!DISKS[@]}"; do
    img=$RUN_DIR/vm/disk$i.img
    truncate -s "${DISKS[$i]}" "$img" || die "bad --disk size: ${DISKS[$i]}"
    DRIVE_ARGS+=(-drive "file=$img,if=virtio,format=raw,cache=unsafe")
    GUEST_DISKS+=("/dev/vd${letters:$i:1}")
done

# The job: what the guest's second stage runs, as bash-quoted assignments.
{
    printf 'VM_CWD=%q\n' "$PWD"
    printf 'VM_CMD=('; printf '%q ' "${CMD[@]}"; printf ')\n'
    printf 'VM_DISKS=%q\n' "${GUEST_DISKS[*]}"
    printf 'VM_ENV=('
    for name in "${DEFAULT_PASS_ENV[@]}" ${VM_PASS_ENV:-}; do
        [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "VM_PASS_ENV: not a variable name: $name"
        if [[ -v $name ]]; then printf '%q ' "$name=${!name}"; fi
    done
    printf ')\n'
} >"$RUN_DIR/vm/job.sh"

# ---------------------------------------------------------------- boot
CONSOLE=$RUN_DIR/vm/console.log
APPEND="console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off rdinit=/init 8250.nr_uarts=2"
APPEND+=" random.trust_cpu=on cryptomgr.notests=1 vm_run=$RUN_DIR vm_init=$VM_DIR/guest-init.sh ${VM_APPEND:-}"

QEMU=(qemu-system-x86_64 -nodefaults -no-user-config -no-reboot -display none
      -machine q35 "${ACCEL_ARGS[@]}" -smp "$SMP" -m "$MEM" "${QEMU_BIOS[@]}"
      -kernel "$KCACHE/vmlinux" -initrd "$INITRAMFS" -append "$APPEND"
      -serial "file:$CONSOLE"
      -chardev stdio,id=out,signal=off -serial chardev:out
      -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap
      -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
      -fsdev "local,id=vmrun,path=$RUN_DIR,security_model=none,multidevs=remap"
      -device virtio-9p-pci,fsdev=vmrun,mount_tag=vmrun
      "${DRIVE_ARGS[@]}"
      -pidfile "$RUN_DIR/vm/qemu.pid")

log "kernel $KVER, $ACCEL, $SMP vCPU, $MEM MiB, run folder ${RUN_DIR#"$REPO_ROOT"/}"
T0=$(date +%s.%N)
# The parent-death signals end timeout(1) and QEMU even if this script is killed
# with SIGKILL (the EXIT trap cannot run then).
setpriv --pdeathsig TERM -- timeout --signal=TERM --kill-after=10 "$TIMEOUT" \
    setpriv --pdeathsig KILL -- "${QEMU[@]}" </dev/null &
QEMU_PID=$!
QRC=0
wait "$QEMU_PID" || QRC=$?
QEMU_PID=
T1=$(date +%s.%N)

# The guest writes vm/started through 9p just before the command starts: its
# mtime is the host's clock (the guest's own clock is less reliable under TCG).
if [[ -e $RUN_DIR/vm/started ]]; then
    TS=$(date -r "$RUN_DIR/vm/started" +%s.%N)
    TIMING=$(awk -v a="$T0" -v b="$TS" -v c="$T1" \
        'BEGIN { printf "boot %.1f s, command %.1f s, total %.1f s", b - a, c - b, c - a }')
else
    TIMING=$(awk -v a="$T0" -v c="$T1" 'BEGIN { printf "total %.1f s (command never started)", c - a }')
fi

console_tail() {
    [[ -s $CONSOLE ]] || { log "(console log is empty)"; return 0; }
    log "last lines of the kernel console ($CONSOLE):"
    # mkfs on loop devices over the overlay logs many harmless WRITE_ZEROES errors.
    grep -v 'op 0x9:(WRITE_ZEROES)' -- "$CONSOLE" | tail -n 40 | sed 's/^/  | /' >&2
}

RC=125
if ((QRC == 124)); then
    log "timeout: killed the VM after $TIMEOUT s"
    console_tail
    RC=124
elif [[ -s $RUN_DIR/vm/exit-code ]]; then
    RC=$(<"$RUN_DIR/vm/exit-code")
    [[ $RC =~ ^[0-9]+$ ]] || RC=125
    if ((RC != 0)); then
        log "command exited with $RC"
        console_tail
    fi
else
    log "the VM stopped without a result (qemu exit status $QRC)"
    console_tail
fi

if ((SELF_TEST)); then
    printf 'vm wall time (host clock, %s): %s\n' "$ACCEL" "$TIMING"
else
    log "$ACCEL: $TIMING"
fi
if ((RC == 0)); then SUCCESS=1; else log "run folder kept: $RUN_DIR"; fi
exit "$RC"
