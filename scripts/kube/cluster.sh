#!/usr/bin/env bash
# A real multi-node Kubernetes on this machine, for tests, everything of it
# under one directory DIR and named from DIR's own run id.
#
# Usage:
#   cluster.sh up DIR [--nodes N]      start a cluster (default 3 nodes)
#   cluster.sh down DIR [--purge]      stop it and remove what it created
#                                      (--purge: then delete DIR too)
#   cluster.sh load-image DIR ARCHIVE  import an OCI/docker archive on every node
#   cluster.sh kubelet-stop|kubelet-start DIR NODE
#   cluster.sh runtime-stop|runtime-start DIR NODE    (the node's containerd)
#   cluster.sh node-freeze|node-thaw DIR NODE         (cgroup freezer: pods,
#                                      kubelet, containerd, kube-proxy)
#   cluster.sh node-partition|node-heal DIR NODE      (cut/restore the node's link)
#   cluster.sh apiserver-stop|apiserver-start DIR     (the API server down for
#                                      everyone, back on the same address)
#   cluster.sh kubectl DIR ARGS...     kubectl with DIR/kubeconfig
#   cluster.sh status DIR              what runs
#
# Layout (X = 10.(160+index), index allocated per run under /run/holdfast-kube):
#   host netns:  link hk<rid> X.0.1/30, route X.0.0/16 via X.0.2 (so the
#                test process reaches the apiserver, node IPs and pod IPs)
#   netns hk-<rid>-cp: etcd (127.0.0.1:2379, data on a tmpfs under DIR),
#                kube-apiserver (https://X.0.2:6443 from the host,
#                https://X.1.1:6443 from the nodes), controller-manager,
#                scheduler, CoreDNS (X.1.1:53), bridge br0 X.1.1/24
#   netns hk-<rid>-nK: node-K, eth0 X.1.(10+K) on br0, its own mount
#                namespace (DIR/ns/nK.mnt) in which /run, /var/lib and
#                /var/log are DIR/nodes/nK/fs/*; containerd, kubelet,
#                kube-proxy (iptables), CNI bridge cni0, pods X.(128+K).0/24
#   services X.64.0/20 (kubernetes = X.64.1), cluster domain cluster.local
#   cgroups /hk-<rid>/{cp,nK/system,nK/kubepods} in every v1 hierarchy, weighted
#   as 32 processes (cg_weigh)
#
# Binaries come from scripts/kube/build.sh (override: HOLDFAST_KUBE_BIN, the
# bin dir, with ../images/pause.tar beside it).
# Environment: HOLDFAST_KUBE_OWNER_PID (up): a process whose death marks the
# cluster abandoned; a later `up` then tears it down first.
# HOLDFAST_KUBE_PV_PER_NODE: local PersistentVolumes per node (default 8).
# HOLDFAST_KUBE_KEEP=1: a failed `up` leaves what it started, for a look.
# HOLDFAST_KUBE_NODE_GRACE (up): the controller-manager's
# --node-monitor-grace-period (Kubernetes' default when unset: a node whose
# kubelet stopped turns Ready=Unknown after ~45-50 s); e.g. 20s.
# Everything a cluster writes is under DIR; DIR/env lists its addresses and
# names, DIR/logs/*.log the components' output.
set -euo pipefail

readonly PROG=cluster.sh
readonly STATE_ROOT=/run/holdfast-kube
readonly MARKER=.holdfast-kube-cluster
readonly MAX_INDEX=32
readonly PV_PER_NODE=${HOLDFAST_KUBE_PV_PER_NODE:-8}
readonly ZONES=(zone-a zone-b zone-c)
# The sandbox image: the first name in build.sh's images/pause.tags.
PAUSE_IMAGE=registry.k8s.io/pause:3.10.2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly HERE

die() {
	echo "$PROG: error: $*" >&2
	exit 1
}
log() { echo "$PROG: $(date +%T) $*" >&2; }

usage() {
	sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- the run dir

# check_new_dir DIR: DIR is where a new cluster may live.
check_new_dir() {
	local d=$1
	[[ -n $d ]] || die "DIR is empty"
	[[ $d == /* ]] || die "DIR must be an absolute path (got '$d')"
	[[ $d != *//* && $d != */./* && $d != */../* && $d != */. && $d != */.. ]] || die "DIR must be a plain path (got '$d')"
	d=${d%/}
	[[ -n $d ]] || die "DIR must not be /"
	case $d/ in
	/run/* | /var/* | /proc/* | /sys/* | /dev/* | /etc/* | /usr/*) die "DIR must not be under /run, /var, /proc, /sys, /dev, /etc or /usr (got '$d')" ;;
	esac
	mkdir -p -- "$d"
	[[ $(realpath -- "$d") == "$d" ]] || die "DIR must not contain symbolic links (got '$d', which is $(realpath -- "$d"))"
	[[ -z $(ls -A -- "$d") ]] || die "DIR '$d' is not empty"
	((${#d} <= 60)) || die "DIR '$d' is too long (unix socket paths under it must stay short); use a shorter TMPDIR"
	DIR=$d
}

# load_dir DIR: DIR holds a cluster this script created; loads its state.
load_dir() {
	local d=${1:-}
	[[ -n $d ]] || die "DIR is empty"
	[[ $d == /* ]] || die "DIR must be an absolute path (got '$d')"
	d=${d%/}
	[[ -n $d && $d != */.. && $d != */../* ]] || die "refusing DIR '$1'"
	[[ -d $d && ! -L $d ]] || die "DIR '$d' is not a directory"
	[[ $(realpath -- "$d") == "$d" ]] || die "DIR '$d' is not a canonical path"
	[[ -f $d/$MARKER ]] || die "DIR '$d' has no $MARKER: not a cluster directory made by $PROG; refusing"
	local tag rid
	read -r tag rid <"$d/$MARKER" || true
	[[ $tag == holdfast-kube-cluster && $rid =~ ^[0-9a-f]{6}$ ]] || die "$d/$MARKER is not ours; refusing"
	[[ -f $d/state ]] || die "$d/state missing; refusing"
	RID="" IDX="" NODES=0 NET="" BIN=""
	local key val
	while IFS='=' read -r key val; do
		case $key in
		RID) [[ $val =~ ^[0-9a-f]{6}$ ]] && RID=$val ;;
		IDX) [[ $val =~ ^[0-9]{0,2}$ ]] && IDX=$val ;;
		NODES) [[ $val =~ ^[0-9]$ ]] && NODES=$val ;;
		NET) [[ $val =~ ^(10\.[0-9]{3})?$ ]] && NET=$val ;;
		BIN) [[ $val == /* || -z $val ]] && BIN=$val ;;
		esac
	done <"$d/state"
	[[ $RID == "$rid" ]] || die "$d/state belongs to run '$RID', the marker to '$rid'; refusing"
	DIR=$d
	names
}

# names: every name this run uses, from RID (and NET when allocated).
names() {
	CG=hk-$RID
	CP_NS=hk-$RID-cp
	HOST_LINK=hk$RID
	NS_DIR=$DIR/ns
	PIDS=$DIR/pids
	LOGS=$DIR/logs
	PKI=$DIR/pki
}

save_state() {
	cat >"$DIR/state.tmp" <<-EOF
		RID=$RID
		IDX=$IDX
		NODES=$NODES
		NET=$NET
		BIN=$BIN
	EOF
	mv -f "$DIR/state.tmp" "$DIR/state"
}

node_ns() { echo "hk-$RID-n$1"; }
node_dir() { echo "$DIR/nodes/n$1"; }
node_name() { echo "node-$1"; }
node_ip() { echo "$NET.1.$((10 + $1))"; }
node_subnet() { echo "$NET.$((128 + $1)).0/24"; }

# node_index NAME: K for node-K (or nK, or K).
node_index() {
	local n=$1
	n=${n#node-}
	n=${n#n}
	[[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= NODES)) || die "no node '$1' (nodes: node-1 .. node-$NODES)"
	echo "$n"
}

# ------------------------------------------------------------ index (subnet)

alloc_index() {
	mkdir -p "$STATE_ROOT"
	local i f rid dir found=""
	exec {lockfd}>"$STATE_ROOT/lock"
	flock "$lockfd"
	for ((i = 0; i < MAX_INDEX; i++)); do
		f=$STATE_ROOT/slot-$i
		if [[ -f $f ]]; then
			rid="" dir=""
			read -r rid dir <"$f" || true
			# Taken while its directory still has the marker of that run.
			if [[ -n $dir && -f $dir/$MARKER ]] && grep -qx "holdfast-kube-cluster $rid" "$dir/$MARKER" 2>/dev/null; then
				continue
			fi
		fi
		# Something else on this machine uses the range: skip it. (The
		# lists are read whole before grep -q looks: with pipefail, ip
		# writing into the pipe grep -q closed on its first match would
		# make a used range look free.)
		if grep -q "^10\.$((160 + i))\." <<<"$(ip -4 route show)" || grep -q " 10\.$((160 + i))\." <<<"$(ip -4 -o addr show)"; then
			continue
		fi
		echo "$RID $DIR" >"$f"
		found=$i
		break
	done
	exec {lockfd}>&-
	[[ -n $found ]] || die "no free run index in $STATE_ROOT (all $MAX_INDEX taken)"
	IDX=$found
	NET=10.$((160 + IDX))
}

# proc_start PID: the process's start time (field 22 of stat), "" if gone.
proc_start() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
	stat=${stat##*) }
	# shellcheck disable=SC2086
	set -- $stat
	echo "${20}"
}

# sweep_abandoned: tears down clusters whose owner process (recorded from
# HOLDFAST_KUBE_OWNER_PID, e.g. a test binary killed by a timeout) is gone.
sweep_abandoned() {
	local f rid dir opid ostart
	for f in "$STATE_ROOT"/slot-*; do
		[[ -f $f ]] || continue
		rid="" dir=""
		read -r rid dir <"$f" || true
		[[ $rid =~ ^[0-9a-f]{6}$ && $dir == /* && -f $dir/$MARKER && -f $dir/owner && ! -f $dir/down.done ]] || continue
		grep -qx "holdfast-kube-cluster $rid" "$dir/$MARKER" 2>/dev/null || continue
		opid="" ostart=""
		read -r opid ostart <"$dir/owner" || true
		[[ $opid =~ ^[0-9]+$ ]] || continue
		[[ -n $(proc_start "$opid") && $(proc_start "$opid") == "$ostart" ]] && continue
		log "sweeping cluster $rid in $dir: its owner process $opid is gone"
		bash "${BASH_SOURCE[0]}" down "$dir" >&2 || log "sweep of $dir failed"
	done
}

release_index() {
	[[ -n ${IDX:-} ]] || return 0
	local f=$STATE_ROOT/slot-$IDX rid="" dir=""
	[[ -f $f ]] || return 0
	exec {lockfd}>"$STATE_ROOT/lock"
	flock "$lockfd"
	read -r rid dir <"$f" || true
	[[ $rid == "$RID" ]] && rm -f -- "$f"
	exec {lockfd}>&-
}

# ------------------------------------------------------------------ cgroups

# cg_mounts: the mount points of every cgroup hierarchy (v1 and v2).
cg_mounts() {
	awk '$0 ~ / - cgroup2? / { print $5 }' /proc/self/mountinfo | sort -u
}

# cg_mkdir REL: creates /REL in every hierarchy (cpuset copied from parent).
cg_mkdir() {
	local rel=$1 m path parent part
	while read -r m; do
		path=$m
		IFS=/ read -ra parts <<<"$rel"
		for part in "${parts[@]}"; do
			[[ -n $part ]] || continue
			parent=$path
			path=$path/$part
			if [[ ! -d $path ]]; then
				mkdir "$path"
				if [[ -f $path/cpuset.cpus ]]; then
					cat "$parent/cpuset.cpus" >"$path/cpuset.cpus"
					cat "$parent/cpuset.mems" >"$path/cpuset.mems"
				fi
			fi
		done
	done < <(cg_mounts)
}

# cg_join PID REL: moves PID into /REL in every hierarchy.
cg_join() {
	local pid=$1 rel=$2 m
	while read -r m; do
		echo "$pid" >"$m/$rel/cgroup.procs"
	done < <(cg_mounts)
}

# cg_weigh: the cluster's share of the CPU. The kernel weighs a cgroup as
# one process (cpu.shares 1024 in v1, cpu.weight 100 in v2), so beside a busy
# run the whole test Kubernetes - control plane, kubelets, runtimes, every
# pod - got the CPU of a single process of that run: its API server answered
# the members' lease renewals late and primaries fenced (kube steps
# RollingNodeUpgrade, APIServerUnreachable). It weighs as much as
# CG_WEIGHT_TASKS processes, and within it the control plane, which is the
# members' store, as much as two nodes. Best effort: a hierarchy without the
# knob is left as it is.
CG_WEIGHT_TASKS=32
cg_weigh() {
	local m
	while read -r m; do
		if [[ -f $m/$CG/cpu.shares ]]; then
			echo $((1024 * CG_WEIGHT_TASKS)) >"$m/$CG/cpu.shares" || log "warning: cannot weigh $m/$CG"
			echo 2048 >"$m/$CG/cp/cpu.shares" || log "warning: cannot weigh $m/$CG/cp"
		elif [[ -f $m/$CG/cpu.weight ]]; then
			echo $((100 * CG_WEIGHT_TASKS)) >"$m/$CG/cpu.weight" || log "warning: cannot weigh $m/$CG"
			if [[ -f $m/$CG/cp/cpu.weight ]]; then
				echo 200 >"$m/$CG/cp/cpu.weight" || log "warning: cannot weigh $m/$CG/cp"
			fi
		fi
	done < <(cg_mounts)
}

freezer_dir() { echo "/sys/fs/cgroup/freezer/$CG${1:+/$1}"; }

# cg_pids REL: every pid in /REL and below (freezer or pids hierarchy).
cg_pids() {
	local root m
	for m in /sys/fs/cgroup/freezer /sys/fs/cgroup/pids; do
		root=$m/$1
		if [[ -d $root ]]; then
			find "$root" -name cgroup.procs -exec cat {} + 2>/dev/null
			return 0
		fi
	done
}

# cg_kill_all: kills every process of this run (everything is in /$CG).
cg_kill_all() {
	local fz pids try
	fz=$(freezer_dir)
	for ((try = 0; try < 50; try++)); do
		pids=$(cg_pids "$CG")
		[[ -z $pids ]] && return 0
		if [[ -d $fz ]]; then
			echo FROZEN >"$fz/freezer.state" 2>/dev/null || true
			pids=$(cg_pids "$CG")
		fi
		# shellcheck disable=SC2086
		[[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
		# Thaw every level: a node frozen by node-freeze stays frozen under
		# a thawed parent, and its killed processes would never exit.
		if [[ -d $fz ]]; then
			find "$fz" -depth -name freezer.state -exec sh -c 'for f; do echo THAWED >"$f"; done' sh {} + 2>/dev/null || true
		fi
		sleep 0.2
	done
	[[ -z $(cg_pids "$CG") ]] || {
		echo "$PROG: processes left in cgroup /$CG: $(cg_pids "$CG" | tr '\n' ' ')" >&2
		return 1
	}
}

cg_remove_all() {
	local m rc=0
	while read -r m; do
		[[ -d $m/$CG ]] || continue
		find "$m/$CG" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ -d $m/$CG ]] && {
			echo "$PROG: cannot remove cgroup $m/$CG" >&2
			rc=1
		}
	done < <(cg_mounts)
	return $rc
}

# ---------------------------------------------------------------- processes

# launch NAME CGROUP NETNS MNTNS|- CMD...: starts CMD in its own session,
# in cgroup /CGROUP, network namespace NETNS (and mount namespace pinned at
# MNTNS), output to DIR/logs/NAME.log; records its pid in DIR/pids/NAME.pid.
launch() {
	local name=$1 cg=$2 ns=$3 mnt=$4
	shift 4
	local -a enter=(nsenter "--net=/run/netns/$ns")
	[[ $mnt != - ]] && enter+=("--mount=$mnt")
	(
		cg_join "$BASHPID" "$cg"
		cd /
		exec setsid "${enter[@]}" -- "$@"
	) >>"$LOGS/$name.log" 2>&1 </dev/null &
	local pid=$! i
	disown "$pid" 2>/dev/null || true
	echo "$pid" >"$PIDS/$name.pid"
	# Wait until it is in its cgroup (or gone), so it counts as ours.
	for ((i = 0; i < 100; i++)); do
		ours "$pid" && return 0
		[[ -d /proc/$pid ]] || return 0
		sleep 0.05
	done
}

# ours PID: PID is alive and one of this run's processes.
ours() {
	[[ $1 =~ ^[0-9]+$ ]] && [[ -r /proc/$1/cgroup ]] && grep -q ":/$CG/" "/proc/$1/cgroup" 2>/dev/null
}

comp_pid() {
	local f=$PIDS/$1.pid pid
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	ours "$pid" || return 1
	echo "$pid"
}

# stop_comp NAME: SIGTERM to its process group, SIGKILL after 10 s.
stop_comp() {
	local pid i
	pid=$(comp_pid "$1") || return 0
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		ours "$pid" || break
		[[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
		sleep 0.1
	done
	if ours "$pid"; then
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f -- "$PIDS/$1.pid"
}

# wait_for WHAT SECONDS CMD...: retries CMD until it succeeds.
wait_for() {
	local what=$1 secs=$2 start=$SECONDS
	shift 2
	until "$@" >/dev/null; do
		((SECONDS - start < secs)) || die "timed out after ${secs}s waiting for $what"
		sleep 0.3
	done
}

alive() { comp_pid "$1" >/dev/null || die "$1 exited; see $LOGS/$1.log: $(tail -n 5 "$LOGS/$1.log" 2>/dev/null)"; }

# ---------------------------------------------------------------------- pki

openssl_cert() { # NAME CN O EKU SAN
	local name=$1 cn=$2 o=$3 eku=$4 san=$5 subj
	subj="/CN=$cn"
	[[ -n $o ]] && subj="/O=$o$subj"
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
	openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		[[ -n $san ]] && echo "subjectAltName=$san"
	} >"$PKI/$name.ext"
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-set_serial "0x$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')" -days 3650 \
		-extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
	rm -f -- "$PKI/$name.csr" "$PKI/$name.ext"
}

b64() { base64 -w0 <"$1"; }

# kubeconfig FILE SERVER CERTNAME
kubeconfig() {
	cat >"$1" <<-EOF
		apiVersion: v1
		kind: Config
		clusters:
		- name: holdfast-kube
		  cluster:
		    server: $2
		    certificate-authority-data: $(b64 "$PKI/ca.crt")
		users:
		- name: $3
		  user:
		    client-certificate-data: $(b64 "$PKI/$3.crt")
		    client-key-data: $(b64 "$PKI/$3.key")
		contexts:
		- name: holdfast-kube
		  context: {cluster: holdfast-kube, user: $3}
		current-context: holdfast-kube
	EOF
	chmod 600 "$1"
}

make_pki() {
	mkdir -p "$PKI"
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
	openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=holdfast-kube-ca-$RID" -days 3650 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$PKI/ca.crt" 2>/dev/null
	openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/sa.key" 2>/dev/null
	openssl ec -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
	openssl_cert apiserver kube-apiserver "" serverAuth \
		"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NET.0.2,IP:$NET.1.1,IP:$NET.64.1"
	openssl_cert admin admin system:masters clientAuth ""
	openssl_cert apiserver-kubelet kube-apiserver-kubelet-client system:masters clientAuth ""
	openssl_cert controller-manager system:kube-controller-manager system:masters clientAuth ""
	openssl_cert scheduler system:kube-scheduler system:masters clientAuth ""
	openssl_cert coredns coredns system:masters clientAuth ""
	openssl_cert kube-proxy system:kube-proxy "" clientAuth ""
	local k
	for ((k = 1; k <= NODES; k++)); do
		openssl_cert "kubelet-n$k" "system:node:$(node_name "$k")" system:nodes clientAuth ""
	done
}

# ---------------------------------------------------------------- network

nsx() { # NETNS CMD...: CMD inside the network namespace
	local ns=$1
	shift
	nsenter "--net=/run/netns/$ns" -- "$@"
}

make_network() {
	ip netns add "$CP_NS"
	ip -n "$CP_NS" link set lo up
	ip -n "$CP_NS" link add br0 type bridge
	ip -n "$CP_NS" addr add "$NET.1.1/24" dev br0
	ip -n "$CP_NS" link set br0 up
	nsx "$CP_NS" sysctl -qw net.ipv4.ip_forward=1
	ip link add "$HOST_LINK" type veth peer name uplink netns "$CP_NS"
	ip addr add "$NET.0.1/30" dev "$HOST_LINK"
	ip link set "$HOST_LINK" up
	ip -n "$CP_NS" addr add "$NET.0.2/30" dev uplink
	ip -n "$CP_NS" link set uplink up
	ip route add "$NET.0.0/16" via "$NET.0.2" dev "$HOST_LINK"
	local k j ns
	for ((k = 1; k <= NODES; k++)); do
		ns=$(node_ns "$k")
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		ip -n "$CP_NS" link add "n$k" type veth peer name eth0 netns "$ns"
		ip -n "$CP_NS" link set "n$k" master br0 up
		ip -n "$ns" addr add "$(node_ip "$k")/24" dev eth0
		ip -n "$ns" link set eth0 up
		ip -n "$ns" route add default via "$NET.1.1"
		nsx "$ns" sysctl -qw net.ipv4.ip_forward=1
		ip -n "$CP_NS" route add "$(node_subnet "$k")" via "$(node_ip "$k")"
	done
	for ((k = 1; k <= NODES; k++)); do
		for ((j = 1; j <= NODES; j++)); do
			((j == k)) && continue
			ip -n "$(node_ns "$k")" route add "$(node_subnet "$j")" via "$(node_ip "$j")"
		done
	done
}

# make_node_mntns K: the node's mount namespace, pinned at DIR/ns/nK.mnt:
# /run, /var/lib and /var/log are the node's own directories, and the
# kernel settings the kubelet would otherwise change machine-wide read as
# the values it wants.
make_node_mntns() {
	local k=$1 nd fs
	nd=$(node_dir "$k")
	fs=$nd/fs
	mkdir -p "$fs/run/netns" "$fs/run/lock" "$fs/var-lib" "$fs/var-log" "$fs/sysctl"
	local -A want=([vm/overcommit_memory]=1 [vm/panic_on_oom]=0 [kernel/panic]=10
		[kernel/panic_on_oops]=1 [kernel/keys/root_maxkeys]=1000000 [kernel/keys/root_maxbytes]=25000000)
	local hostmnt parent
	hostmnt=$(stat -L -c %i /proc/self/ns/mnt)
	parent=$(dirname "$DIR")
	# Inside the new namespace only (the first line checks that): drop the
	# copies of mounts that would pin other namespaces or other runs'
	# mounts (netns pins, anything under /run or beside DIR), then bind the
	# node's own directories.
	local s script="set -e; [ \"\$(stat -L -c %i /proc/self/ns/mnt)\" != '$hostmnt' ] || exit 97; mount --make-rprivate /"
	script+="; awk -v p='$parent/' '{ if (\$9 == \"nsfs\" || index(\$5, \"/run/\") == 1 || (p != \"//\" && index(\$5, p) == 1)) print length(\$5) \" \" \$5 }' /proc/self/mountinfo | sort -rn | cut -d' ' -f2- | while read -r m; do umount -l \"\$m\" 2>/dev/null || true; done"
	script+="; mount --bind '$fs/run' /run; mount --bind '$fs/var-lib' /var/lib; mount --bind '$fs/var-log' /var/log"
	for s in "${!want[@]}"; do
		[[ -f /proc/sys/$s ]] || continue
		echo "${want[$s]}" >"$fs/sysctl/${s//\//.}"
		script+="; mount --bind '$fs/sysctl/${s//\//.}' /proc/sys/$s; mount -o remount,bind,ro /proc/sys/$s"
	done
	touch "$NS_DIR/n$k.mnt"
	unshare "--mount=$NS_DIR/n$k.mnt" --propagation private -- bash -c "$script"
}

# ------------------------------------------------------------ control plane

start_etcd() {
	launch etcd "$CG/cp" "$CP_NS" - "$BIN/etcd" --name default \
		--data-dir "$DIR/cp/etcd/data" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster default=http://127.0.0.1:2380 --initial-cluster-state new \
		--unsafe-no-fsync --quota-backend-bytes 1073741824 --log-level warn
}

start_apiserver() {
	launch kube-apiserver "$CG/cp" "$CP_NS" - "$BIN/kube-apiserver" \
		--etcd-servers http://127.0.0.1:2379 \
		--bind-address 0.0.0.0 --secure-port 6443 --advertise-address "$NET.1.1" \
		--service-cluster-ip-range "$NET.64.0/20" \
		--client-ca-file "$PKI/ca.crt" \
		--tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
		--service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
		--service-account-issuer https://kubernetes.default.svc.cluster.local \
		--authorization-mode Node,RBAC \
		--kubelet-client-certificate "$PKI/apiserver-kubelet.crt" --kubelet-client-key "$PKI/apiserver-kubelet.key" \
		--kubelet-preferred-address-types InternalIP,Hostname \
		--allow-privileged=true --profiling=false --v=1
}

start_controller_manager() {
	launch kube-controller-manager "$CG/cp" "$CP_NS" - "$BIN/kube-controller-manager" \
		--kubeconfig "$DIR/cp/controller-manager.kubeconfig" \
		--authentication-kubeconfig "$DIR/cp/controller-manager.kubeconfig" \
		--authorization-kubeconfig "$DIR/cp/controller-manager.kubeconfig" \
		--bind-address 127.0.0.1 --leader-elect=false \
		--service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
		--use-service-account-credentials=true \
		--cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
		--service-cluster-ip-range "$NET.64.0/20" --cluster-cidr "$NET.128.0/17" \
		--flex-volume-plugin-dir "$DIR/cp/flexvolume" \
		${HOLDFAST_KUBE_NODE_GRACE:+--node-monitor-grace-period "$HOLDFAST_KUBE_NODE_GRACE"} \
		--profiling=false --v=1
}

start_scheduler() {
	launch kube-scheduler "$CG/cp" "$CP_NS" - "$BIN/kube-scheduler" \
		--kubeconfig "$DIR/cp/scheduler.kubeconfig" \
		--authentication-kubeconfig "$DIR/cp/scheduler.kubeconfig" \
		--authorization-kubeconfig "$DIR/cp/scheduler.kubeconfig" \
		--bind-address 127.0.0.1 --leader-elect=false --profiling=false --v=1
}

start_coredns() {
	cat >"$DIR/cp/Corefile" <<-EOF
		.:53 {
		    errors
		    health 127.0.0.1:8080
		    ready $NET.1.1:8181
		    kubernetes cluster.local in-addr.arpa ip6.arpa {
		        kubeconfig $DIR/cp/coredns.kubeconfig
		        pods insecure
		        ttl 5
		    }
		}
	EOF
	launch coredns "$CG/cp" "$CP_NS" - "$BIN/coredns" -conf "$DIR/cp/Corefile"
}

# ---------------------------------------------------------------- nodes

write_node_config() {
	local k=$1 nd name
	nd=$(node_dir "$k")
	name=$(node_name "$k")
	mkdir -p "$nd/containerd/root" "$nd/containerd/state" "$nd/containerd/opt" "$nd/containerd/runc" \
		"$nd/cni/net.d" "$nd/cni/ipam" "$nd/kubelet" "$nd/volume-plugins" "$nd/pv" "$nd/fs/var-log/pods"
	cat >"$nd/containerd.toml" <<-EOF
		version = 2
		root = "$nd/containerd/root"
		state = "$nd/containerd/state"
		disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
		[grpc]
		  address = "$nd/containerd.sock"
		[debug]
		  level = "warn"
		[plugins."io.containerd.internal.v1.opt"]
		  path = "$nd/containerd/opt"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "$PAUSE_IMAGE"
		  restrict_oom_score_adj = true
		  disable_apparmor = true
		  enable_selinux = false
		  stream_server_address = "127.0.0.1"
		  stream_server_port = "0"
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    snapshotter = "overlayfs"
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        Root = "$nd/containerd/runc"
		        SystemdCgroup = false
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "/usr/lib/cni"
		    conf_dir = "$nd/cni/net.d"
		    max_conf_num = 1
	EOF
	cat >"$nd/cni/net.d/10-holdfast.conflist" <<-EOF
		{
		  "cniVersion": "1.0.0",
		  "name": "hk-$RID-n$k",
		  "plugins": [
		    {
		      "type": "bridge",
		      "bridge": "cni0",
		      "isGateway": true,
		      "ipMasq": false,
		      "hairpinMode": true,
		      "ipam": {
		        "type": "host-local",
		        "dataDir": "$nd/cni/ipam",
		        "ranges": [[{"subnet": "$(node_subnet "$k")", "gateway": "$NET.$((128 + k)).1"}]],
		        "routes": [{"dst": "0.0.0.0/0"}]
		      }
		    },
		    {"type": "portmap", "capabilities": {"portMappings": true}}
		  ]
		}
	EOF
	echo "nameserver $NET.1.1" >"$nd/resolv.conf"
	cat >"$nd/kubelet.yaml" <<-EOF
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		address: $(node_ip "$k")
		port: 10250
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		healthzPort: 10248
		authentication:
		  anonymous: {enabled: false}
		  webhook: {enabled: false}
		  x509: {clientCAFile: $PKI/ca.crt}
		authorization: {mode: AlwaysAllow}
		cgroupDriver: cgroupfs
		cgroupRoot: /$CG/n$k
		cgroupsPerQOS: true
		enforceNodeAllocatable: [pods]
		failCgroupV1: false
		failSwapOn: false
		containerRuntimeEndpoint: unix://$nd/containerd.sock
		clusterDNS: [$NET.1.1]
		clusterDomain: cluster.local
		resolvConf: $nd/resolv.conf
		hairpinMode: none
		volumePluginDir: $nd/volume-plugins
		podLogsDir: /var/log/pods
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		evictionHard: {memory.available: 50Mi, nodefs.available: 1%, nodefs.inodesFree: 1%, imagefs.available: 1%}
		serializeImagePulls: false
		rotateCertificates: false
		serverTLSBootstrap: false
	EOF
	openssl_cert_exists "kubelet-n$k"
	kubeconfig "$nd/kubelet.kubeconfig" "https://$NET.1.1:6443" "kubelet-n$k"
	kubeconfig "$nd/kube-proxy.kubeconfig" "https://$NET.1.1:6443" kube-proxy
	cat >"$nd/kube-proxy.yaml" <<-EOF
		apiVersion: kubeproxy.config.k8s.io/v1alpha1
		kind: KubeProxyConfiguration
		clientConnection: {kubeconfig: $nd/kube-proxy.kubeconfig}
		hostnameOverride: $name
		bindAddress: 0.0.0.0
		healthzBindAddress: 0.0.0.0:10256
		metricsBindAddress: 127.0.0.1:10249
		clusterCIDR: $NET.128.0/17
		mode: iptables
		iptables: {masqueradeAll: true, localhostNodePorts: false}
		conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
	EOF
}

openssl_cert_exists() { [[ -f $PKI/$1.crt ]] || die "certificate $1 missing"; }

start_containerd() {
	local k=$1
	launch "containerd-n$k" "$CG/n$k/system" "$(node_ns "$k")" "$NS_DIR/n$k.mnt" \
		/usr/bin/containerd --config "$(node_dir "$k")/containerd.toml"
}

start_kubelet() {
	local k=$1 nd
	nd=$(node_dir "$k")
	launch "kubelet-n$k" "$CG/n$k/system" "$(node_ns "$k")" "$NS_DIR/n$k.mnt" \
		"$BIN/kubelet" --config "$nd/kubelet.yaml" --kubeconfig "$nd/kubelet.kubeconfig" \
		--root-dir "$nd/kubelet" --hostname-override "$(node_name "$k")" --node-ip "$(node_ip "$k")" \
		--node-labels "topology.kubernetes.io/zone=${ZONES[$(((k - 1) % ${#ZONES[@]}))]}" --v=1
}

start_kube_proxy() {
	local k=$1
	launch "kube-proxy-n$k" "$CG/n$k/system" "$(node_ns "$k")" "$NS_DIR/n$k.mnt" \
		"$BIN/kube-proxy" --config "$(node_dir "$k")/kube-proxy.yaml" --v=1
}

ctr_node() { # K ARGS...
	local k=$1
	shift
	ctr --address "$(node_dir "$k")/containerd.sock" -n k8s.io "$@"
}

# import_image K ARCHIVE: imports, and names every image it imported that
# has no registry also docker.io/library/<name> (what the kubelet asks for).
import_image() {
	local k=$1 archive=$2 out name full
	out=$(ctr_node "$k" images import "$archive" 2>&1) || die "ctr images import $archive on node-$k failed: $out"
	while read -r name; do
		[[ -n $name ]] || continue
		case ${name%%/*} in
		*.* | *:* | localhost) [[ $name == */* ]] && continue ;;
		esac
		full=docker.io/library/$name
		[[ $name == */* ]] && full=docker.io/$name
		ctr_node "$k" images tag --force "$name" "$full" >/dev/null 2>&1 || true
	done < <(sed -n 's/^unpacking \([^ ]*\) (sha256:.*/\1/p' <<<"$out")
}

# ------------------------------------------------------------------- verbs

find_bin() {
	if [[ -n ${HOLDFAST_KUBE_BIN:-} ]]; then
		BIN=$HOLDFAST_KUBE_BIN
	else
		BIN=$(bash "$HERE/build.sh" --print-dir --no-build) ||
			die "the Kubernetes binaries are not built: run scripts/kube/build.sh (~15 min the first time)"
	fi
	local b
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd coredns; do
		[[ -x $BIN/$b ]] || die "$BIN/$b missing: run scripts/kube/build.sh"
	done
	[[ -f $BIN/../images/pause.tar ]] || die "$BIN/../images/pause.tar missing: run scripts/kube/build.sh"
	if [[ -s $BIN/../images/pause.tags ]]; then
		PAUSE_IMAGE=$(head -n 1 "$BIN/../images/pause.tags")
	fi
	local c
	for c in containerd runc ctr ip iptables nsenter unshare openssl /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
		[[ -x $c ]] || command -v "$c" >/dev/null || die "$c missing: run scripts/kube/build.sh (it installs the Debian packages)"
	done
}

kctl() { "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }

# dns_ok SERVER NAME: SERVER answers an A query for NAME with an address.
dns_ok() {
	local server=$1 name=$2 pkt='\x4b\x1d\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00' l fd resp
	local -a labels bytes
	IFS=. read -ra labels <<<"$name"
	for l in "${labels[@]}"; do pkt+=$(printf '\\x%02x' "${#l}")$l; done
	pkt+='\x00\x00\x01\x00\x01'
	exec {fd}<>"/dev/udp/$server/53" || return 1
	# One datagram: printf alone may write in pieces (it flushes at a 0x0a).
	# shellcheck disable=SC2059
	printf "$pkt" | dd bs=512 count=1 iflag=fullblock 2>/dev/null >&"$fd"
	resp=$(timeout 2 dd bs=4096 count=1 <&"$fd" 2>/dev/null | od -An -tu1 -v) || true
	exec {fd}>&-
	read -ra bytes <<<"$(echo $resp)"
	((${#bytes[@]} >= 12)) || return 1
	((bytes[0] == 75 && bytes[1] == 29 && (bytes[3] & 15) == 0 && bytes[6] * 256 + bytes[7] > 0))
}

node_ready_count() {
	kctl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c '^True$'
}
nodes_ready() { [[ $(node_ready_count) == "$NODES" ]]; }

apply_storage() {
	local k p nd y=""
	y+=$'apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: local\n  annotations:\n    storageclass.kubernetes.io/is-default-class: "true"\nprovisioner: kubernetes.io/no-provisioner\nvolumeBindingMode: WaitForFirstConsumer\nreclaimPolicy: Retain\n'
	for ((k = 1; k <= NODES; k++)); do
		nd=$(node_dir "$k")
		for ((p = 1; p <= PV_PER_NODE; p++)); do
			mkdir -p "$nd/pv/pv-$p"
			chmod 0777 "$nd/pv/pv-$p"
			y+=$(
				cat <<-EOF
					---
					apiVersion: v1
					kind: PersistentVolume
					metadata:
					  name: local-n$k-$p
					  labels: {holdfast.io/node: $(node_name "$k")}
					spec:
					  capacity: {storage: 1Gi}
					  accessModes: [ReadWriteOnce]
					  persistentVolumeReclaimPolicy: Retain
					  storageClassName: local
					  volumeMode: Filesystem
					  local: {path: $nd/pv/pv-$p}
					  nodeAffinity:
					    required:
					      nodeSelectorTerms:
					      - matchExpressions:
					        - {key: kubernetes.io/hostname, operator: In, values: [$(node_name "$k")]}
				EOF
			)
			y+=$'\n'
		done
	done
	kctl apply -f - <<<"$y" >/dev/null
}

write_env() {
	local k names="" ips="" nss=""
	for ((k = 1; k <= NODES; k++)); do
		names+="${names:+ }$(node_name "$k")"
		ips+="${ips:+ }$(node_ip "$k")"
		nss+="${nss:+ }$(node_ns "$k")"
	done
	cat >"$DIR/env" <<-EOF
		HOLDFAST_KUBE_DIR=$DIR
		HOLDFAST_KUBE_RUN_ID=$RID
		HOLDFAST_KUBE_INDEX=$IDX
		KUBECONFIG=$DIR/kubeconfig
		HOLDFAST_KUBE_BIN=$BIN
		HOLDFAST_KUBE_KUBECTL=$BIN/kubectl
		HOLDFAST_KUBE_APISERVER=https://$NET.0.2:6443
		HOLDFAST_KUBE_APISERVER_IN_CLUSTER=https://$NET.1.1:6443
		HOLDFAST_KUBE_DNS=$NET.1.1
		HOLDFAST_KUBE_NODES=$names
		HOLDFAST_KUBE_NODE_IPS=$ips
		HOLDFAST_KUBE_NODE_NETNS=$nss
		HOLDFAST_KUBE_CP_NETNS=$CP_NS
		HOLDFAST_KUBE_HOST_LINK=$HOST_LINK
		HOLDFAST_KUBE_CGROUP=/$CG
		HOLDFAST_KUBE_POD_CIDR=$NET.128.0/17
		HOLDFAST_KUBE_SERVICE_CIDR=$NET.64.0/20
		HOLDFAST_KUBE_CLUSTER_DOMAIN=cluster.local
		HOLDFAST_KUBE_STORAGE_CLASS=local
	EOF
}

cmd_up() {
	local dir="" arg
	NODES=3
	while (($#)); do
		arg=$1
		shift
		case $arg in
		--nodes)
			NODES=${1:-}
			shift || true
			;;
		--nodes=*) NODES=${arg#--nodes=} ;;
		-*) die "up: unknown option $arg" ;;
		*)
			[[ -z $dir ]] || die "up: more than one DIR"
			dir=$arg
			;;
		esac
	done
	[[ -n $dir ]] || die "up: DIR missing"
	[[ $NODES =~ ^[0-9]+$ ]] && ((NODES >= 1 && NODES <= 9)) || die "up: --nodes must be 1..9"
	((EUID == 0)) || die "up: must run as root (network namespaces, mounts, cgroups)"
	find_bin
	[[ -f /sys/fs/cgroup/freezer/freezer.state || -d /sys/fs/cgroup/freezer ]] && [[ -d /sys/fs/cgroup/memory ]] ||
		die "up: needs a cgroup v1 host (the freezer and memory hierarchies under /sys/fs/cgroup)"
	[[ -z ${HOLDFAST_KUBE_NODE_GRACE:-} || $HOLDFAST_KUBE_NODE_GRACE =~ ^[0-9]+s$ ]] || die "up: HOLDFAST_KUBE_NODE_GRACE must look like 20s"
	check_new_dir "$dir"
	local t0=$SECONDS
	RID=$(od -An -tx1 -N3 /dev/urandom | tr -d ' \n')
	IDX="" NET=""
	names
	echo "holdfast-kube-cluster $RID" >"$DIR/$MARKER"
	save_state
	mkdir -p "$PIDS" "$LOGS" "$NS_DIR" "$DIR/cp/etcd" "$DIR/nodes"
	# From here on, a failure tears down what was made.
	trap 'rc=$?; if ((rc != 0)); then
		if [[ ${HOLDFAST_KUBE_KEEP:-} == 1 ]]; then log "up failed; HOLDFAST_KUBE_KEEP=1: left running; cluster.sh down $DIR"
		else log "up failed; tearing down"; ( cmd_down "$DIR" ) || true; fi
	fi; exit $rc' EXIT
	if [[ ${HOLDFAST_KUBE_OWNER_PID:-} =~ ^[0-9]+$ ]]; then
		echo "$HOLDFAST_KUBE_OWNER_PID $(proc_start "$HOLDFAST_KUBE_OWNER_PID")" >"$DIR/owner"
	fi
	sweep_abandoned
	alloc_index
	save_state
	log "run $RID index $IDX: net $NET.0.0/16, $NODES nodes, dir $DIR"

	# Mounts under DIR: the etcd tmpfs and a private bind for the pins.
	mount -t tmpfs -o size=1g,mode=0700 "hk-$RID-etcd" "$DIR/cp/etcd"
	mount --bind "$NS_DIR" "$NS_DIR"
	mount --make-private "$NS_DIR"

	cg_mkdir "$CG/cp"
	local k
	for ((k = 1; k <= NODES; k++)); do
		cg_mkdir "$CG/n$k/system"
	done
	cg_weigh
	make_network
	make_pki
	kubeconfig "$DIR/kubeconfig" "https://$NET.0.2:6443" admin
	kubeconfig "$DIR/cp/controller-manager.kubeconfig" https://127.0.0.1:6443 controller-manager
	kubeconfig "$DIR/cp/scheduler.kubeconfig" https://127.0.0.1:6443 scheduler
	kubeconfig "$DIR/cp/coredns.kubeconfig" https://127.0.0.1:6443 coredns
	for ((k = 1; k <= NODES; k++)); do
		write_node_config "$k"
		make_node_mntns "$k"
	done
	write_env

	start_etcd
	for ((k = 1; k <= NODES; k++)); do start_containerd "$k"; done
	wait_for etcd 30 eval 'alive etcd && nsx "$CP_NS" curl -fs http://127.0.0.1:2379/health'
	start_apiserver
	wait_for kube-apiserver 90 eval 'alive kube-apiserver && kctl get --raw /readyz 2>/dev/null'
	start_controller_manager
	start_scheduler
	start_coredns
	for ((k = 1; k <= NODES; k++)); do
		wait_for "containerd on node-$k" 30 eval "alive containerd-n$k && ctr_node $k version 2>/dev/null"
		import_image "$k" "$BIN/../images/pause.tar"
		start_kubelet "$k"
		start_kube_proxy "$k"
	done
	apply_storage
	wait_for "$NODES nodes Ready" 120 eval 'for c in $(ls "$PIDS"); do alive "${c%.pid}"; done; nodes_ready'
	wait_for "CoreDNS" 60 eval 'alive coredns && dns_ok "$NET.1.1" kubernetes.default.svc.cluster.local'
	wait_for "the default service account" 60 eval 'kctl -n default get serviceaccount default 2>/dev/null'
	trap - EXIT
	log "up in $((SECONDS - t0)) s: KUBECONFIG=$DIR/kubeconfig apiserver https://$NET.0.2:6443 nodes $(grep ^HOLDFAST_KUBE_NODES= "$DIR/env" | cut -d= -f2)"
}

# host_mounts_under DIR: mount points at or under DIR, deepest first.
host_mounts_under() {
	awk -v d="$1" '{
		p = $5
		gsub(/\\040/, " ", p); gsub(/\\011/, "\t", p); gsub(/\\012/, "\n", p); gsub(/\\134/, "\\", p)
		if (index(p, d "/") == 1) print length(p) "\t" p
	}' /proc/self/mountinfo | sort -rn | cut -f2-
}

cmd_down() {
	local purge=""
	[[ ${2:-} == --purge ]] && purge=1
	load_dir "${1:-}"
	((EUID == 0)) || die "down: must run as root"
	local rc=0 m ns t0=$SECONDS downfd
	exec {downfd}>"$DIR/.down.lock"
	flock "$downfd"
	[[ -f $DIR/down.done ]] && rm -f -- "$DIR/down.done"
	# 1. Processes: everything of this run is in cgroup /hk-<rid>.
	for f in "$PIDS"/*.pid; do
		[[ -f $f ]] || continue
		pid=$(<"$f")
		ours "$pid" && kill -KILL -- "-$pid" 2>/dev/null || true
	done
	cg_kill_all || rc=1
	rm -f -- "$PIDS"/*.pid
	# 2. Mounts on the host under DIR (the node namespaces' own mounts go
	#    with them once their pins are unmounted), deepest first.
	while read -r m; do
		[[ -n $m && $m == "$DIR"/* ]] || continue
		umount -- "$m" 2>/dev/null || umount -l -- "$m" 2>/dev/null || {
			echo "$PROG: cannot unmount $m" >&2
			rc=1
		}
	done < <(host_mounts_under "$DIR")
	# 3. Network namespaces and the host link, by their names.
	while read -r ns _; do
		[[ $ns == "$CP_NS" || $ns =~ ^hk-$RID-n[0-9]+$ ]] || continue
		ip netns del "$ns" || rc=1
	done < <(ip netns list 2>/dev/null)
	if ip link show "$HOST_LINK" >/dev/null 2>&1; then
		ip link del "$HOST_LINK" 2>/dev/null || ! ip link show "$HOST_LINK" >/dev/null 2>&1 || rc=1
	fi
	# 4. Cgroups.
	cg_remove_all || rc=1
	# 5. Check.
	[[ -z $(host_mounts_under "$DIR") ]] || {
		echo "$PROG: still mounted under $DIR: $(host_mounts_under "$DIR" | tr '\n' ' ')" >&2
		rc=1
	}
	if grep -q "^hk-$RID-" <<<"$(ip netns list 2>/dev/null)"; then
		echo "$PROG: network namespaces left: $(ip netns list | grep "^hk-$RID-" | tr '\n' ' ')" >&2
		rc=1
	fi
	((rc == 0)) || die "down: teardown of $DIR incomplete"
	release_index
	date +%s >"$DIR/down.done"
	log "down in $((SECONDS - t0)) s: run $RID, $DIR"
	if [[ $purge ]]; then
		[[ -z $(host_mounts_under "$DIR") ]] || die "down --purge: mounts left under $DIR"
		rm -rf --one-file-system -- "$DIR"
	fi
}

cmd_load_image() {
	load_dir "${1:-}"
	local archive=${2:-} k
	[[ -f $archive ]] || die "load-image: archive '$archive' not found"
	for ((k = 1; k <= NODES; k++)); do
		import_image "$k" "$archive" &
	done
	wait_all
}

wait_all() {
	local rc=0 p
	for p in $(jobs -p); do wait "$p" || rc=1; done
	return $rc
}

cmd_node_verb() {
	local verb=$1
	load_dir "${2:-}"
	local k
	k=$(node_index "${3:-}")
	local fz
	fz=$(freezer_dir "n$k")
	case $verb in
	kubelet-stop) stop_comp "kubelet-n$k" ;;
	kubelet-start)
		comp_pid "kubelet-n$k" >/dev/null && die "kubelet of node-$k is running"
		start_kubelet "$k"
		;;
	runtime-stop) stop_comp "containerd-n$k" ;;
	runtime-start)
		comp_pid "containerd-n$k" >/dev/null && die "containerd of node-$k is running"
		start_containerd "$k"
		wait_for "containerd on node-$k" 30 eval "ctr_node $k version 2>/dev/null"
		;;
	node-freeze)
		echo FROZEN >"$fz/freezer.state"
		wait_for "node-$k frozen" 30 grep -qx FROZEN "$fz/freezer.state"
		;;
	node-thaw) echo THAWED >"$fz/freezer.state" ;;
	node-partition) ip -n "$CP_NS" link set "n$k" down ;;
	node-heal) ip -n "$CP_NS" link set "n$k" up ;;
	esac
}

# cmd_apiserver_verb apiserver-stop|apiserver-start DIR: the API server
# unreachable for everyone (nodes, pods, the test) and back on the same
# address, with the same etcd.
cmd_apiserver_verb() {
	local verb=$1
	load_dir "${2:-}"
	case $verb in
	apiserver-stop) stop_comp kube-apiserver ;;
	apiserver-start)
		comp_pid kube-apiserver >/dev/null && die "the API server is running"
		start_apiserver
		wait_for kube-apiserver 90 eval 'alive kube-apiserver && kctl get --raw /readyz 2>/dev/null'
		;;
	esac
}

cmd_status() {
	load_dir "${1:-}"
	local f c pid
	echo "run $RID index $IDX net $NET.0.0/16 nodes $NODES dir $DIR"
	for f in "$PIDS"/*.pid; do
		[[ -f $f ]] || continue
		c=$(basename "$f" .pid)
		if pid=$(comp_pid "$c"); then
			echo "$c pid $pid rss $(awk '/^VmRSS/ {print $2 " " $3}' "/proc/$pid/status")"
		else
			echo "$c not running"
		fi
	done
	local k
	for ((k = 1; k <= NODES; k++)); do
		echo "node-$k freezer $(cat "$(freezer_dir "n$k")/freezer.state" 2>/dev/null) link $(ip -n "$CP_NS" -o link show "n$k" 2>/dev/null | grep -o 'state [A-Z]*')"
	done
}

main() {
	local verb=${1:-}
	(($#)) && shift
	case $verb in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	load-image) cmd_load_image "$@" ;;
	kubelet-stop | kubelet-start | runtime-stop | runtime-start | node-freeze | node-thaw | node-partition | node-heal)
		cmd_node_verb "$verb" "$@"
		;;
	kubectl)
		load_dir "${1:-}"
		shift
		exec "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"
		;;
	apiserver-stop | apiserver-start) cmd_apiserver_verb "$verb" "$@" ;;
	status) cmd_status "$@" ;;
	-h | --help | help | "") usage ;;
	*) die "unknown verb '$verb' (try --help)" ;;
	esac
}

main "$@"
