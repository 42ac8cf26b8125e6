#!/bin/bash
# lab/vm.sh -- run one host command inside a throw-away User-Mode Linux kernel
# that has IPVS, with the host's filesystem visible, and return its exit code.
#
#   lab/vm.sh [OPTIONS] [--] COMMAND [ARG...]   run COMMAND in the guest, in $PWD
#   lab/vm.sh --prepare                         only install packages + fill the cache
#   lab/vm.sh --help
#
# Why: most development and CI kernels have no IPVS.  The guest is Debian's
# user-mode-linux kernel (6.1, IPVS and netfilter as modules): an ordinary host
# process, no /dev/kvm, about 1.5 s to boot.  Its root filesystem is the host's
# "/" (hostfs, read-only) under a tmpfs overlay, so the host's Python, the .venv
# and the checkout are all there.  Writes vanish with the VM, EXCEPT in the
# current directory and in the --rw directories, which are the host's, read-write.
#
# Options (each also settable through the environment):
#   --mem MiB           guest RAM (LAB_VM_MEM, default 512).  Above 1024 MiB the
#                       host's vm.max_map_count must be large: raised when root.
#   --timeout SEC       kill the VM after SEC seconds, exit 124 (LAB_VM_TIMEOUT)
#   --boot-timeout SEC  give up when the guest has not started the command after
#                       SEC seconds, exit 125 (LAB_VM_BOOT_TIMEOUT, default 60)
#   --rw DIR            also share DIR read-write (repeatable; LAB_VM_RW, ':'-separated)
#   --stdin             feed our stdin to the command, read to EOF before boot
#                       (LAB_VM_STDIN=1); the default stdin is /dev/null
#   --debug             print the guest console, keep the control dir (LAB_VM_DEBUG=1)
# Environment only:
#   LAB_VM_CACHE        cache of the kernel package (default /var/cache/lvsguard-lab)
#   LAB_VM_MODULES      modules loaded at boot (default: IPVS + schedulers, conntrack,
#                       veth, dummy, bridge, iptables mangle + MARK); others autoload
#   LAB_VM_NO_APT=1     never call apt-get
#   LAB_VM_CPU_LATENCY  "off": do not hold the host's CPUs out of their sleep
#                       states while the VM runs (default on when root; docs/lab.md says why)
# Inside the guest: IPVS_VM_GUEST=1, you are root, `lo` is up, hostname lvs-lab.
# Exit status: the command's; 124 timeout; 125 the VM did not boot or failed.
# Not a sandbox: the guest's root can reach the host's files with our rights.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
MODULES_DEFAULT="ip_vs ip_vs_rr ip_vs_wrr ip_vs_wlc ip_vs_sh ip_vs_mh nf_conntrack veth dummy bridge ip_tables iptable_mangle xt_mark xt_multiport"

###############################################################################
# Guest side.  This same file is the guest's init (PID 1): the kernel runs it
# from the shared host root, with lab_ctl=<control dir> in its environment.
# Every external command costs 30-60 ms under UML (process creation goes
# through ptrace), so this does as few as it can: mounts come from one fstab.
###############################################################################
guest_init() {
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin
    local C=$lab_ctl R=/run/lab/root wrapper modules cwd rc=125 p
    # /proc first: until the guest's own proc/sys are mounted, those paths are
    # the HOST's (hostfs passes host paths straight through).
    mount -t proc proc /proc
    # The ctl dir is readable right away through the read-only host root.
    read -r wrapper < "$C/modprobe_wrapper"
    read -r modules < "$C/modules" || true
    read -r -d '' cwd < "$C/cwd" || true
    # Module autoload (ipvsadm -s sh, ip link add type veth, iptables, ...): the kernel
    # execs this wrapper, which points kmod at this kernel's modules in the cache.
    echo "$wrapper" > /proc/sys/kernel/modprobe
    echo lvs-lab > /proc/sys/kernel/hostname
    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /run/lab/up /run/lab/work
    # sysfs, ctl (rw), overlay root, its proc/sys/dev/pts/shm/run, rw shares
    mount -a -T "$C/fstab"
    : > /run/lab/ctl/booted   # the host's boot watchdog waits for this file
    cp -a "${wrapper%/modprobe}/devlinks/." "$R/dev/"   # /dev/fd, /dev/std{in,out,err}, /dev/ptmx
    # shellcheck disable=SC2086
    [ -z "$modules" ] || modprobe -a -d "${wrapper%/modprobe}/modroot" $modules ||
        echo "lab/vm.sh: some modules did not load: $modules" > /dev/tty1
    ip link set lo up   # IPVS refuses NAT dests ("address not unicast") while lo is down

    # stdout/stderr: dedicated ttys wired to the host's fds; raw = no \n -> \r\n.
    # Where the host's fd is not a terminal, the command gets a pipe (through a
    # cat) instead, so isatty(), colours and stdio buffering match the host.
    local out=/dev/tty0 err=/dev/tty1 in=/dev/null ttys
    stty -F "$out" raw -echo
    stty -F "$err" raw -echo
    [ -e "$C/stdin" ] && in=/run/lab/ctl/stdin
    read -r ttys < "$C/ttys"
    local -a argv=() envv=() cats=()
    exec 5>"$out" 6>"$err"
    [ "${ttys% *}" = 1 ] || { exec 5> >(exec cat > "$out"); cats+=($!); }
    [ "${ttys#* }" = 1 ] || { exec 6> >(exec cat > "$err"); cats+=($!); }
    while IFS= read -r -d '' p; do argv+=("$p"); done < "$C/argv"
    while IFS= read -r -d '' p; do envv+=("$p"); done < "$C/env"
    set +e
    chroot "$R" /usr/bin/env -i -C "$cwd" -- "${envv[@]}" IPVS_VM_GUEST=1 "${argv[@]}" \
        <"$in" >&5 2>&6 5>&- 6>&-
    rc=$?
    exec 5>&- 6>&-
    [ ${#cats[@]} -eq 0 ] || wait "${cats[@]}"
    set -e
    echo "$rc" > /run/lab/ctl/rc
    sync
    echo o > /proc/sysrq-trigger   # power off (there is no init system to ask)
    sleep 30
}

if [ "$$" = 1 ] && [ -n "${lab_ctl:-}" ]; then
    guest_init || { echo "lab/vm.sh: guest init failed" > /dev/console
                    echo o > /proc/sysrq-trigger; sleep 30; }
    exit 0   # not reached
fi

###############################################################################
# Host side.
###############################################################################
die() { echo "lab/vm.sh: $*" >&2; exit 125; }
log() { echo "lab/vm.sh: $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; }

CACHE=${LAB_VM_CACHE:-/var/cache/lvsguard-lab}
MEM=${LAB_VM_MEM:-512}
TIMEOUT=${LAB_VM_TIMEOUT:-}
BOOT_TIMEOUT=${LAB_VM_BOOT_TIMEOUT:-60}
STDIN=${LAB_VM_STDIN:-}
DEBUG=${LAB_VM_DEBUG:-}
PREPARE_ONLY=
EXTRA_RW=()
IFS=: read -r -a EXTRA_RW <<< "${LAB_VM_RW:-}"

while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --prepare) PREPARE_ONLY=1; shift ;;
        --mem) [ $# -ge 2 ] || die "--mem needs a value in MiB"; MEM=$2; shift 2 ;;
        --timeout) [ $# -ge 2 ] || die "--timeout needs a value in seconds"; TIMEOUT=$2; shift 2 ;;
        --boot-timeout) [ $# -ge 2 ] || die "--boot-timeout needs a value in seconds"; BOOT_TIMEOUT=$2; shift 2 ;;
        --rw) [ $# -ge 2 ] || die "--rw needs a directory"; EXTRA_RW+=("$2"); shift 2 ;;
        --stdin) STDIN=1; shift ;;
        --debug) DEBUG=1; shift ;;
        --) shift; break ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) break ;;
    esac
done
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$MEM" && [ "$MEM" -ge 64 ] || die "guest memory must be a number of MiB >= 64, got '$MEM'"
[ -z "$TIMEOUT" ] || { is_uint "$TIMEOUT" && [ "$TIMEOUT" -gt 0 ]; } || die "timeout must be a number of seconds > 0, got '$TIMEOUT'"
is_uint "$BOOT_TIMEOUT" && [ "$BOOT_TIMEOUT" -gt 0 ] || die "boot timeout must be a number of seconds > 0, got '$BOOT_TIMEOUT'"

need_pkgs() {   # need_pkgs cmd:package ...   apt-get install what provides missing commands
    local pair missing=()
    for pair in "$@"; do command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ -z "${LAB_VM_NO_APT:-}" ] || die "missing packages: ${missing[*]} (LAB_VM_NO_APT is set)"
    [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]} (run as root to apt-get install them)"
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    } || die "apt-get install ${missing[*]} failed"
}

fetch_deb() {   # fetch_deb PACKAGE DIR: the package's .deb into DIR (kept as the cache)
    local pkg=$1 dir=$2
    [ -z "${LAB_VM_NO_APT:-}" ] || die "no $pkg .deb in $dir and LAB_VM_NO_APT is set"
    if ! (cd "$dir" && { apt-get download -qq "$pkg" >/dev/null 2>&1 ||
                         { apt-get update -qq >/dev/null && apt-get download -qq "$pkg" >/dev/null; }; }); then
        die "apt-get download $pkg failed (no network or no Debian apt sources?)"
    fi
}

prepare_cache() {   # $CACHE/uml: the unpacked user-mode-linux .deb, modprobe wrapper, /dev links
    D=$CACHE/uml
    [ -f "$D/ready" ] && return 0
    mkdir -p "$CACHE" 2>/dev/null && [ -w "$CACHE" ] ||
        die "cannot write the cache $CACHE: run 'lab/vm.sh --prepare' as root once, or set LAB_VM_CACHE"
    log "preparing the UML kernel in $D (one-off)"
    mkdir -p "$CACHE/deb"
    ls "$CACHE"/deb/user-mode-linux_*.deb >/dev/null 2>&1 || fetch_deb user-mode-linux "$CACHE/deb"
    rm -rf "$D.tmp"; mkdir -p "$D.tmp"
    local deb kver
    deb=$(ls -t "$CACHE"/deb/user-mode-linux_*.deb | head -1)
    dpkg-deb -x "$deb" "$D.tmp/pkg" || die "cannot unpack $deb"
    kver=$(ls "$D.tmp/pkg/usr/lib/uml/modules")
    [ -x "$D.tmp/pkg/usr/bin/linux.uml" ] && [ -n "$kver" ] || die "$deb holds no linux.uml kernel and modules"
    mkdir -p "$D.tmp/modroot/lib/modules"
    ln -s "$D/pkg/usr/lib/uml/modules/$kver" "$D.tmp/modroot/lib/modules/$kver"
    printf '#!/bin/sh\nexec /sbin/modprobe -d %s/modroot "$@"\n' "$D" > "$D.tmp/modprobe"
    chmod 755 "$D.tmp/modprobe"
    mkdir "$D.tmp/devlinks"
    ln -s /proc/self/fd "$D.tmp/devlinks/fd"
    ln -s /proc/self/fd/0 "$D.tmp/devlinks/stdin"
    ln -s /proc/self/fd/1 "$D.tmp/devlinks/stdout"
    ln -s /proc/self/fd/2 "$D.tmp/devlinks/stderr"
    ln -s pts/ptmx "$D.tmp/devlinks/ptmx"
    rm -rf "$D"; mv "$D.tmp" "$D"; touch "$D/ready"
}

prepare() {
    # ip, ipvsadm, iptables, kmod, mount, stty... run INSIDE the guest, from the host's root
    need_pkgs ip:iproute2 ipvsadm:ipvsadm iptables-legacy:iptables modprobe:kmod chroot:coreutils \
              mount:mount findmnt:util-linux sysctl:procps dpkg-deb:dpkg
    prepare_cache
}

# UML maps guest RAM in many small pieces: a big guest exhausts the default
# vm.max_map_count (65530) and dies with "UML ran out of memory on the host side".
raise_map_count() {
    local want=1048576 have
    [ "$MEM" -gt 1024 ] || return 0
    have=$(cat /proc/sys/vm/max_map_count 2>/dev/null || echo 0)
    [ "$have" -lt "$want" ] || return 0
    if [ "$(id -u)" = 0 ] && sysctl -qw vm.max_map_count="$want" 2>/dev/null; then
        log "raised vm.max_map_count $have -> $want for a ${MEM} MiB guest"
    else
        log "warning: vm.max_map_count is $have; a ${MEM} MiB guest may die (run as root, or: sysctl -w vm.max_map_count=$want)"
    fi
}

# UML runs the guest kernel and each guest process as host processes and turns
# every guest system call into host context switches between them. On a host
# whose idle CPUs halt and take tens of microseconds to wake (a VM under a
# hypervisor, where HLT is an exit), each switch waits for a wake-up: measured
# here, a webhook request took 13.9 ms in the guest on an idle host and 3.0 ms
# with the CPUs held awake; the same code, the same VM. So while the VM runs we
# hold a PM QoS request of 0 us on /dev/cpu_dma_latency (the kernel's own knob,
# the one tuned's latency-performance profile uses): idle CPUs poll instead of
# sleeping. It costs power, not CPU time (a polling idle CPU runs any task at
# once), and ends when the descriptor closes, with this script.
hold_cpu_latency() {
    [ "${LAB_VM_CPU_LATENCY:-on}" != off ] || return 0
    [ -w /dev/cpu_dma_latency ] || return 0
    exec 9>/dev/cpu_dma_latency || return 0
    printf '\0\0\0\0' >&9 || { log "warning: cannot write /dev/cpu_dma_latency; the VM may run slower"; exec 9>&-; }
}

fstab_path() { local s=${1// /\\040}; printf '%s' "${s//	/\\011}"; }   # fstab escaping

if [ -n "$PREPARE_ONLY" ]; then
    [ $# -eq 0 ] || die "--prepare takes no command"
    prepare; log "cache ready: $D"; exit 0
fi
[ $# -gt 0 ] || die "usage: lab/vm.sh [OPTIONS] [--] COMMAND [ARG...]   (see --help)"
prepare
raise_map_count
hold_cpu_latency

# Control dir, shared with the guest: argv, env, cwd, fstab in; booted, rc, logs out.
CTL=$(mktemp -d "${TMPDIR:-/tmp}/lvs-lab.XXXXXX")
VM_PID= WATCHDOG=
cleanup() {
    if [ -n "$WATCHDOG" ]; then kill "$WATCHDOG" 2>/dev/null || true; fi
    if [ -n "$VM_PID" ]; then   # interrupted: take the whole VM process group down
        kill -TERM -- "-$VM_PID" 2>/dev/null || true
        wait "$VM_PID" 2>/dev/null || true
    fi
    if [ -n "$DEBUG" ]; then log "control dir kept: $CTL"; else rm -rf "$CTL"; fi
}
trap cleanup EXIT
trap 'trap - INT; exit 130' INT
trap 'trap - TERM; exit 143' TERM

CWD=$(pwd -P)
printf '%s\0' "$@" > "$CTL/argv"
env -0 > "$CTL/env"
printf '%s\0' "$CWD" > "$CTL/cwd"
echo "$D/modprobe" > "$CTL/modprobe_wrapper"
echo "${LAB_VM_MODULES-$MODULES_DEFAULT}" > "$CTL/modules"
t1=0 t2=0; [ -t 1 ] && t1=1; [ -t 2 ] && t2=1; echo "$t1 $t2" > "$CTL/ttys"
[ -z "$STDIN" ] || cat > "$CTL/stdin"
RW=("$CWD")
for p in "${EXTRA_RW[@]}"; do
    [ -n "$p" ] || continue
    [ -d "$p" ] || die "read-write share $p is not a directory"
    RW+=("$(readlink -f "$p")")
done
case "$CTL${RW[*]}" in *,*) die "paths with commas cannot be shared: $CTL ${RW[*]}";; esac
case "$SELF$CTL" in *[[:space:]]*) die "no whitespace allowed in $SELF or $CTL (TMPDIR)";; esac

# Guest mounts, in order (mount -a -T).  A share is a read-write host dir.
share() { echo "hostfs $(fstab_path "$2") hostfs $(fstab_path "$1"),X-mount.mkdir 0 0"; }
R=/run/lab/root
{
    echo "sysfs /sys sysfs defaults 0 0"
    share "$CTL" /run/lab/ctl
    echo "overlay $R overlay lowerdir=/,upperdir=/run/lab/up,workdir=/run/lab/work,X-mount.mkdir 0 0"
    echo "proc $R/proc proc defaults 0 0"
    echo "sysfs $R/sys sysfs defaults 0 0"
    echo "devtmpfs $R/dev devtmpfs defaults 0 0"
    echo "devpts $R/dev/pts devpts newinstance,ptmxmode=0666,X-mount.mkdir 0 0"
    echo "tmpfs $R/dev/shm tmpfs X-mount.mkdir 0 0"
    echo "tmpfs $R/run tmpfs mode=755 0 0"
    for p in "${RW[@]}"; do share "$p" "$R$p"; done
} > "$CTL/fstab"

# The guest's stdout/stderr come back through FIFOs that plain `cat`s copy to
# ours: works whatever our fds are (tty, pipe, file, socket), and the VM can
# neither set O_NONBLOCK on nor truncate a file description our caller shares.
# We hold write ends (fds 7, 8) until the VM is gone, so the cats see EOF then.
mkfifo "$CTL/stdout" "$CTL/stderr"
cat "$CTL/stdout" 9>&- & CAT1=$!
cat "$CTL/stderr" >&2 9>&- & CAT2=$!
exec 7>"$CTL/stdout" 8>"$CTL/stderr"

# A host with AVX-512 or AMX has an XSAVE area bigger than UML 6.1's 832-byte
# buffer and refuses UML's PTRACE_SETREGSET (the guest's init dies at boot:
# "ptrace set fp regs failed, errno = 14"): lab/uml_xstate.c, preloaded into
# linux.uml, sets the whole area. Guest threads of one process share the state
# UML does not save, so the guest's glibc and OpenSSL leave AVX-512 alone.
PRELOAD=()
if grep -qwE 'avx512f|amx_tile' /proc/cpuinfo 2>/dev/null; then
    command -v cc >/dev/null || die "this host has AVX-512: lab/vm.sh needs a C compiler (cc) for lab/uml_xstate.c"
    cc -O2 -shared -fPIC -o "$CTL/uml_xstate.so" "$(dirname "$SELF")/uml_xstate.c" -ldl ||
        die "cannot build lab/uml_xstate.c"
    PRELOAD=(env "LD_PRELOAD=$CTL/uml_xstate.so")
    printf '%s\0' "GLIBC_TUNABLES=${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD" \
        "OPENSSL_ia32cap=${OPENSSL_ia32cap:-:~0x10000}" >> "$CTL/env"
fi

# UML keeps guest RAM in an unlinked file under TMPDIR that it maps executable:
# use /dev/shm (tmpfs) unless it is mounted noexec.
if [ -d /dev/shm ] && [ -w /dev/shm ] && ! findmnt -no OPTIONS /dev/shm | grep -qw noexec; then
    export TMPDIR=/dev/shm
fi
TO=()
[ -z "$TIMEOUT" ] || TO=(timeout -k 5 "$TIMEOUT")
# con0 -> our stdout, con1 -> our stderr, con2 = kernel console -> log.
# initcall_blacklist: the built-in raid6 boot benchmark alone costs ~0.7 s.
setsid -w "${TO[@]}" "${PRELOAD[@]}" "$D/pkg/usr/bin/linux.uml" \
    mem="${MEM}M" root=/dev/root rootfstype=hostfs hostfs=/ ro init="$SELF" \
    quiet initcall_blacklist=raid6_select_algo \
    console=tty2 con=null con0=null,fd:3 con1=null,fd:4 con2=null,fd:5 ssl=null \
    uml_dir="$CTL" lab_ctl="$CTL" \
    3>&7 4>&8 7>&- 8>&- 9>&- 5>"$CTL/console.log" </dev/null >"$CTL/vm.log" 2>&1 &
VM_PID=$!

# Boot watchdog: a guest that never reaches its init (no ptrace, out of host
# memory, a hang) is killed after BOOT_TIMEOUT seconds instead of hanging CI.
(
    exec 7>&- 8>&- 9>&-
    for _ in $(seq $((BOOT_TIMEOUT * 10))); do
        [ -e "$CTL/booted" ] && exit 0
        kill -0 "$VM_PID" 2>/dev/null || exit 0
        sleep 0.1
    done
    : > "$CTL/boot_timeout"
    kill -TERM -- "-$VM_PID" 2>/dev/null || true
) </dev/null >/dev/null 2>&1 &
WATCHDOG=$!

VM_RC=0
wait "$VM_PID" || VM_RC=$?
VM_PID=
kill "$WATCHDOG" 2>/dev/null || true
wait "$WATCHDOG" 2>/dev/null || true
WATCHDOG=
exec 7>&- 8>&-
wait "$CAT1" "$CAT2" || true

if [ -n "$DEBUG" ]; then
    echo "---- guest console / VM log ----" >&2
    cat "$CTL/console.log" "$CTL/vm.log" >&2
fi
[ -s "$CTL/rc" ] && exit "$(cat "$CTL/rc")"
if [ -e "$CTL/boot_timeout" ]; then
    log "the VM did not boot within ${BOOT_TIMEOUT}s; guest console:"
elif [ "$VM_RC" = 124 ]; then
    log "timed out after ${TIMEOUT}s"; exit 124
elif [ ! -e "$CTL/booted" ]; then
    log "the VM did not boot (linux.uml exited with $VM_RC); guest console:"
else
    log "the VM stopped ($VM_RC) before the command reported its exit code; guest console:"
fi
tail -n 40 "$CTL/console.log" "$CTL/vm.log" >&2 || true
if grep -qs "out of memory on the host side" "$CTL/console.log" "$CTL/vm.log"; then
    log "hint: the host refused guest memory: lower --mem, or raise vm.max_map_count (sysctl -w vm.max_map_count=1048576)"
fi
exit 125
