# shellcheck shell=bash
# Shared functions for scripts/test, scripts/serve and scripts/bootstrap. Source it:
#
#     source scripts/_lib.sh
#
# It only defines functions and a few variables; it changes no shell option of the
# script that sources it. Every function that fails prints why and exits the script.
#
#   bootstrap_venv [EXTRAS]
#                    .venv with `pip install -e '.[EXTRAS]'` (EXTRAS: comma-separated, e.g.
#                    test,dev; none: the runtime dependencies only, what serving needs), redone
#                    only when setup.cfg, pyproject.toml, setup.py or a compiled module changed,
#                    or an extra asked for was not installed yet (SYNCHUB_FORCE_INSTALL=1 forces
#                    it; see setup.py for the compiled modules)
#   ensure_postgres  PostgreSQL accepting connections at 127.0.0.1:5432
#   ensure_redis     Redis answering PONG at 127.0.0.1:6379 (and redis-server installed: the tests
#                    start a throwaway Redis Cluster of their own on other ports)
#   ensure_nats      NATS with JetStream at 127.0.0.1:4222 (the NATS broker's tests)
#   ensure_chromium  Debian's chromium at /usr/bin/chromium (the browser tests drive it headless)
#
# Running services are never restarted or reconfigured. Missing ones are started, and
# installed from Debian's packages when absent (apt-get update runs at most once per
# script run). Needs root, or sudo, only for installing or starting a service.

SYNCHUB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SYNCHUB_VENV="$SYNCHUB_ROOT/.venv"
_SYNCHUB_DEPS_STAMP="$SYNCHUB_VENV/.synchub-deps.sha256"
_SYNCHUB_APT_UPDATED=0

_log() { printf '%s\n' "$*" >&2; }
_die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}

# Runs a command as root: directly when we are root, else through sudo.
_as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		_die "need root (or sudo) to run: $*"
	fi
}

# _wait_for SECONDS COMMAND...: retries COMMAND every half second until it succeeds.
_wait_for() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

_apt_install() {
	command -v apt-get >/dev/null 2>&1 || _die "cannot install $*: no apt-get here; install it by hand"
	if [[ $_SYNCHUB_APT_UPDATED != 1 ]]; then
		_log "-- apt-get update"
		_as_root apt-get -qq -o DPkg::Lock::Timeout=300 update </dev/null || _die "apt-get update failed"
		_SYNCHUB_APT_UPDATED=1
	fi
	_log "-- apt-get install $*"
	_as_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq -o DPkg::Lock::Timeout=300 "$@" </dev/null >/dev/null ||
		_die "apt-get install $* failed"
}

# ---------------------------------------------------------------------------- venv

_python_ok() {
	"$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

# One hash over what an install depends on (a missing file counts as its own state): the
# metadata, setup.py and the modules it compiles (an edit to one needs a fresh build), and
# whether compiling is switched off.
_deps_hash() {
	local f
	{
		for f in setup.cfg pyproject.toml setup.py crdt/_cart_state.py crdt/_compact.py crdt/codec.py; do
			if [[ -f $SYNCHUB_ROOT/$f ]]; then
				printf '%s %s\n' "$f" "$(sha256sum <"$SYNCHUB_ROOT/$f")"
			else
				printf '%s missing\n' "$f"
			fi
		done
		printf 'SYNCHUB_PURE_PYTHON=%s\n' "${SYNCHUB_PURE_PYTHON:-0}"
	} | sha256sum | cut -d' ' -f1
}

# pip in .venv, all its output on stderr, less one warning: a pip configuration may name
# local package folders (find-links, extra-index-url) that hold only some packages, and
# pip then warns once for each package missing there, which says nothing wrong.
_pip() {
	local rc=0
	"$SYNCHUB_VENV/bin/python" -m pip "$@" </dev/null 2>&1 |
		{ grep -v -E "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$" || true; } >&2 ||
		rc=$?
	return "$rc"
}

# _extras_cover HAVE WANT: whether every extra of the comma-separated WANT is in HAVE.
_extras_cover() {
	local extra
	local -a wanted
	IFS=, read -r -a wanted <<<"$2"
	for extra in "${wanted[@]}"; do
		[[ ,$1, == *",$extra,"* ]] || return 1
	done
}

_bootstrap_venv_locked() {
	local py=${SYNCHUB_PYTHON:-python3} extras=${1:-} want have= have_extras= target=.

	if [[ -e $SYNCHUB_VENV ]] && ! _python_ok "$SYNCHUB_VENV/bin/python"; then
		_log "-- .venv has no working Python >= 3.11: recreating it"
		rm -rf -- "$SYNCHUB_VENV"
	fi
	if [[ ! -e $SYNCHUB_VENV ]]; then
		command -v "$py" >/dev/null 2>&1 ||
			_die "$py not found: Python >= 3.11 is needed (SYNCHUB_PYTHON=/path/to/python3.11 picks another)"
		_python_ok "$py" ||
			_die "$py is $("$py" -V 2>&1): Python >= 3.11 is needed (SYNCHUB_PYTHON=/path/to/python3.11 picks another)"
		_log "-- creating .venv with $("$py" -V 2>&1)"
		if ! "$py" -m venv "$SYNCHUB_VENV"; then
			rm -rf -- "$SYNCHUB_VENV"
			_die "'$py -m venv' failed (on Debian: apt-get install python3-venv)"
		fi
	fi

	# The stamp: the hash of what the install depended on, and the extras it installed. A venv with
	# more extras than asked for serves as it is (scripts/serve after scripts/test installs nothing).
	want=$(_deps_hash)
	if [[ -f $_SYNCHUB_DEPS_STAMP ]]; then
		read -r have have_extras <"$_SYNCHUB_DEPS_STAMP" || true
	fi
	if [[ $want == "$have" && ${SYNCHUB_FORCE_INSTALL:-0} != 1 ]] && _extras_cover "$have_extras" "$extras"; then
		return 0
	fi
	[[ -z $extras ]] || target=".[$extras]"
	_log "-- pip install -e '$target'"
	rm -f -- "$_SYNCHUB_DEPS_STAMP"
	(cd "$SYNCHUB_ROOT" && _pip install -q --disable-pip-version-check -e "$target") ||
		_die "pip install -e '$target' failed"
	printf '%s %s\n' "$want" "$extras" >"$_SYNCHUB_DEPS_STAMP"
}

# Creates .venv if needed and installs the project into it, with the extras $1 (comma-separated;
# none: the runtime dependencies only) when its metadata changed or an extra is missing.
# Two scripts bootstrapping at once take turns (flock), so neither sees a half-made venv.
bootstrap_venv() {
	local lock_fd lock_file
	if ! command -v flock >/dev/null 2>&1; then
		_bootstrap_venv_locked "${1:-}"
		return
	fi
	lock_file="${TMPDIR:-/tmp}/synchub-venv-$(printf '%s' "$SYNCHUB_ROOT" | sha256sum | cut -c1-16).lock"
	exec {lock_fd}>"$lock_file" || _die "cannot open $lock_file"
	if ! flock -n "$lock_fd"; then
		_log "-- waiting for another run to finish setting up .venv"
		flock "$lock_fd"
	fi
	_bootstrap_venv_locked "${1:-}"
	# Close the lock so that a program exec'd later does not hold it.
	exec {lock_fd}>&-
}

# ---------------------------------------------------------------------- PostgreSQL

# Prints the name of DIR's subfolder with the highest version number (e.g. 15), if any.
_newest_subdir() {
	find "$1" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1 || true
}

_pg_isready() { pg_isready -q -h 127.0.0.1 -p 5432 -t 3; }

# Prints "VERSION NAME" of the cluster to start: the one set to port 5432, else the
# newest version's "main". Prints nothing if there is no cluster.
_pg_cluster() {
	local line ver
	if command -v pg_lsclusters >/dev/null 2>&1; then
		line=$(pg_lsclusters -h 2>/dev/null | awk '$3 == 5432 { print $1, $2; exit }')
		if [[ -n $line ]]; then
			printf '%s\n' "$line"
			return
		fi
	fi
	ver=$(_newest_subdir /etc/postgresql)
	if [[ -n $ver && -d /etc/postgresql/$ver/main ]]; then
		printf '%s main\n' "$ver"
	fi
}

# Only for a server this script installed: trust TCP connections from this machine, as
# the tests connect as postgres without a password. Put first, so that these lines win.
_pg_trust_local_tcp() {
	local hba="/etc/postgresql/$1/$2/pg_hba.conf"
	_log "-- $hba: trusting TCP connections from 127.0.0.1 and ::1"
	# shellcheck disable=SC2016  # $1 is expanded by the inner bash
	_as_root bash -c '
		set -e
		hba=$1
		grep -q "^# synchub:" "$hba" && exit 0
		{
			printf "%s\n" "# synchub: added by scripts/_lib.sh right after installing this server" \
				"host all all 127.0.0.1/32 trust" "host all all ::1/128 trust"
			cat "$hba"
		} >"$hba.synchub-tmp"
		chown --reference="$hba" "$hba.synchub-tmp"
		chmod --reference="$hba" "$hba.synchub-tmp"
		mv "$hba.synchub-tmp" "$hba"
	' _ "$hba" || _die "could not edit $hba"
}

_pg_diagnose() {
	if command -v pg_lsclusters >/dev/null 2>&1; then
		pg_lsclusters >&2 || true
	fi
	if [[ -n ${1:-} ]]; then
		_log "-- last lines of /var/log/postgresql/postgresql-$1-$2.log:"
		_as_root tail -n 20 "/var/log/postgresql/postgresql-$1-$2.log" >&2 || true
	fi
}

ensure_postgres() {
	local rc=0 ver='' name='' ours=0 cluster newest

	command -v pg_isready >/dev/null 2>&1 || _apt_install postgresql-client
	_pg_isready || rc=$?
	if ((rc == 0)); then
		return 0
	fi

	if ((rc == 1)); then
		# The server answers but rejects connections: starting up, or in recovery.
		_log "-- PostgreSQL at 127.0.0.1:5432 is not accepting connections yet: waiting"
	else
		cluster=''
		if command -v pg_ctlcluster >/dev/null 2>&1; then
			cluster=$(_pg_cluster)
		fi
		if [[ -z $cluster ]]; then
			# Not installed (or no cluster at all): whatever cluster comes now is ours.
			_apt_install postgresql
			ours=1
			cluster=$(_pg_cluster)
		fi
		if [[ -z $cluster && $ours == 1 ]]; then
			# Installed, but no cluster was made for it (create_main_cluster = false).
			newest=$(_newest_subdir /usr/lib/postgresql)
			[[ -n $newest ]] || _die "PostgreSQL was installed but /usr/lib/postgresql is empty"
			_log "-- creating cluster $newest/main"
			_as_root pg_createcluster "$newest" main >/dev/null || _die "pg_createcluster $newest main failed"
			cluster=$(_pg_cluster)
		fi
		[[ -n $cluster ]] || _die "PostgreSQL is installed but has no cluster under /etc/postgresql to start"
		read -r ver name <<<"$cluster"

		if [[ $ours == 1 ]]; then
			_pg_trust_local_tcp "$ver" "$name"
		fi
		if pg_ctlcluster "$ver" "$name" status >/dev/null 2>&1; then
			# Running (the package may have started it) but not reachable yet.
			if [[ $ours == 1 ]]; then
				_as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload ||
					_die "could not reload PostgreSQL $ver/$name"
			fi
		else
			_log "-- starting PostgreSQL $ver/$name"
			if ! _as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start; then
				_pg_diagnose "$ver" "$name"
				_die "could not start PostgreSQL $ver/$name"
			fi
		fi
	fi

	if ! _wait_for 30 _pg_isready; then
		_pg_diagnose "$ver" "$name"
		_die "PostgreSQL is not accepting connections at 127.0.0.1:5432 after 30 s"
	fi
	_log "-- PostgreSQL is up at 127.0.0.1:5432"
}

# --------------------------------------------------------------------------- NATS

# The server's INFO line says whether JetStream is on.
_nats_jetstream() {
	timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/4222 && head -n 1 <&3' 2>/dev/null | grep -q '"jetstream":true'
}

ensure_nats() {
	if _nats_jetstream; then
		return 0
	fi
	if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
		_die "a NATS server answers at 127.0.0.1:4222 without JetStream: restart it with -js"
	fi
	command -v nats-server >/dev/null 2>&1 || [[ -x /usr/sbin/nats-server ]] || _apt_install nats-server
	_log "-- starting NATS (JetStream) at 127.0.0.1:4222"
	_as_root mkdir -p /var/lib/nats-server || _die "cannot create /var/lib/nats-server"
	_as_root sh -c 'nohup /usr/sbin/nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
		-l /var/log/nats-server.log >/dev/null 2>&1 &' || _die "nats-server failed to start"
	if ! _wait_for 30 _nats_jetstream; then
		_log "-- last lines of /var/log/nats-server.log:"
		_as_root tail -n 20 /var/log/nats-server.log >&2 || true
		_die "NATS JetStream does not answer at 127.0.0.1:4222 after 30 s"
	fi
	_log "-- NATS is up at 127.0.0.1:4222"
}

# --------------------------------------------------------------------------- Redis

_redis_ping() {
	[[ $(timeout 5 redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null) == PONG ]]
}

ensure_redis() {
	command -v redis-cli >/dev/null 2>&1 || _apt_install redis-tools
	if _redis_ping; then
		command -v redis-server >/dev/null 2>&1 || _apt_install redis-server
		return 0
	fi

	if ! command -v redis-server >/dev/null 2>&1; then
		_apt_install redis-server redis-tools
		# Where the package's own scripts start it, it comes up by itself.
		if _wait_for 3 _redis_ping; then
			return 0
		fi
	fi
	_log "-- starting Redis at 127.0.0.1:6379"
	_as_root mkdir -p /var/lib/redis /var/log/redis || _die "cannot create /var/lib/redis and /var/log/redis"
	_as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/ci.log || _die "redis-server failed to start"
	if ! _wait_for 30 _redis_ping; then
		_log "-- last lines of /var/log/redis/ci.log:"
		_as_root tail -n 20 /var/log/redis/ci.log >&2 || true
		_die "Redis does not answer PONG at 127.0.0.1:6379 after 30 s"
	fi
	_log "-- Redis is up at 127.0.0.1:6379"
}

# ------------------------------------------------------------------------ Chromium

# The browser tests (tests/test_pages.py) drive Debian's chromium headless through playwright-core:
# installed here when missing, never skipped.
ensure_chromium() {
	if [[ -x /usr/bin/chromium ]]; then
		return 0
	fi
	_apt_install chromium
	[[ -x /usr/bin/chromium ]] || _die "apt-get install chromium left no /usr/bin/chromium"
	_log "-- $(/usr/bin/chromium --version 2>/dev/null) installed"
}
