#!/usr/bin/env bash
# serve_tb.sh: a remote server's TensorBoard in the local browser, in one command.
#
# One ssh connection (a ControlMaster, so that the forward can be added once the remote port is known)
# runs a small bash wrapper on the server. The wrapper checks the log directory, starts TensorBoard on
# 127.0.0.1 in its own process group, and kills that group (TensorBoard and its data server) as soon as
# its stdin closes. Its stdin is the ssh session: it closes on Ctrl-C and SIGTERM here (we close it) and
# when the connection drops (sshd closes it), so no TensorBoard outlives the session, pty or not.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=${SCRIPT_DIR%/*}
readonly PROG SCRIPT_DIR PROJECT_DIR
readonly DEFAULT_LOCAL_PORT=16008 DEFAULT_REMOTE_PORT=6008 PORT_TRIES=50
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options] [ssh options] HOST

Start TensorBoard on HOST, forward it to this machine and open it in the browser. HOST is any ssh
destination: an alias from ~/.ssh/config or user@host (jump hosts through ssh's config or -J).
Ctrl-C, SIGTERM or a lost connection stop the remote TensorBoard and its data server.

Options (each can also be set by the environment variable in brackets):
  --logdir DIR        remote log directory, absolute or relative to --remote-dir
                      [SERVE_TB_LOGDIR] (default: outputs)
  --remote-dir DIR    remote project directory, absolute or relative to the remote home
                      [SERVE_TB_REMOTE_DIR] (default: this checkout's path relative to \$HOME,
                      here: $(default_remote_dir))
  --env CMD           shell command run on HOST before tensorboard, in --remote-dir
                      [SERVE_TB_ENV] (e.g. --env 'source .venv/bin/activate')
  --local-port N      local port, bound on 127.0.0.1 [SERVE_TB_LOCAL_PORT]
                      (default: $DEFAULT_LOCAL_PORT, or the next free one if taken)
  --remote-port N     TensorBoard's port on HOST, bound on 127.0.0.1 [SERVE_TB_REMOTE_PORT]
                      (default: $DEFAULT_REMOTE_PORT, or the next free one if taken)
  --no-browser        only print the URL [SERVE_TB_NO_BROWSER=1]
  -h, --help          show this help

A port given with --local-port or --remote-port is used as is: the script fails if it is taken.
Any other option starting with '-' goes to ssh (e.g. -J jump, -p 2222, -i key, -o Option=value);
-f -n -N -t -M -O -S -s -W -G -V are refused because they would break the session.

The URL is printed on a line that contains http://localhost:PORT; it runs until stopped. Exit status:
130 after Ctrl-C, 143 after SIGTERM, 1 on an error or a lost connection (a line "$PROG: error: ...").
EOF
}

note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# The remote project directory defaults to this checkout's place relative to $HOME, so that
# ~/code/proj here means ~/code/proj there. A checkout outside $HOME keeps its absolute path.
default_remote_dir() {
  if [[ -n ${HOME:-} && $PROJECT_DIR == "$HOME"/* ]]; then
    printf '%s\n' "${PROJECT_DIR#"$HOME"/}"
  else
    printf '%s\n' "$PROJECT_DIR"
  fi
}

# True when an HTTP server on 127.0.0.1:PORT answers TensorBoard's /data/environment with 200.
tensorboard_answers() { http_answers "$1" /data/environment 'HTTP/1.? 200*'; }

# ---- options ---------------------------------------------------------------------------------------
logdir=${SERVE_TB_LOGDIR:-outputs}
remote_dir=${SERVE_TB_REMOTE_DIR:-}
env_cmd=${SERVE_TB_ENV:-}
local_port=${SERVE_TB_LOCAL_PORT:-}
remote_port=${SERVE_TB_REMOTE_PORT:-}
no_browser=${SERVE_TB_NO_BROWSER:-0}
host=""
ssh_opts=()

# ssh options that would break the session (see take_ssh_option in common.sh).
readonly SSH_REFUSED_FLAGS="fnNtMOSsWGV"

need_value() { (($# >= 2)) || die "option $1 needs a value (see --help)"; }

while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --logdir) need_value "$@"; logdir=$2; shift 2 ;;
    --logdir=*) logdir=${1#*=}; shift ;;
    --remote-dir) need_value "$@"; remote_dir=$2; shift 2 ;;
    --remote-dir=*) remote_dir=${1#*=}; shift ;;
    --env) need_value "$@"; env_cmd=$2; shift 2 ;;
    --env=*) env_cmd=${1#*=}; shift ;;
    --local-port) need_value "$@"; local_port=$2; shift 2 ;;
    --local-port=*) local_port=${1#*=}; shift ;;
    --remote-port) need_value "$@"; remote_port=$2; shift 2 ;;
    --remote-port=*) remote_port=${1#*=}; shift ;;
    --no-browser) no_browser=1; shift ;;
    --*) die "unknown option $1 (see --help)" ;;
    -?*)
      take_ssh_option "$@"
      shift "$used"
      ;;
    *)
      [[ -z $host ]] || die "only one HOST can be given (got '$host' and '$1'; see --help)"
      host=$1
      shift
      ;;
  esac
done

[[ -n $host ]] || die "no HOST given (see --help)"
[[ -n $logdir ]] || die "--logdir is empty"
[[ -n $remote_dir ]] || remote_dir=$(default_remote_dir)
case $no_browser in
  1 | true | yes) no_browser=1 ;;
  0 | false | no | "") no_browser=0 ;;
  *) die "SERVE_TB_NO_BROWSER must be 1 or 0, got '$no_browser'" ;;
esac
for name in local_port remote_port; do
  value=${!name}
  [[ -z $value ]] || is_port "$value" || die "--${name/_/-} must be a port number (1-65535), got '$value'"
done
command -v ssh >/dev/null || die "ssh (the OpenSSH client) is not installed here"

# ---- the local port: checked before connecting, so a taken port fails fast -----------------------
if [[ -n $local_port ]]; then
  local_port=$((10#$local_port))
  ! port_in_use "$local_port" ||
    die "local port $local_port is already in use on 127.0.0.1 (choose another --local-port, or leave it out to take the next free one)"
  local_port_fixed=1
else
  local_port_fixed=0
  local_port=$(free_port "$DEFAULT_LOCAL_PORT")
fi
if [[ -n $remote_port ]]; then
  remote_port=$((10#$remote_port))
  remote_port_fixed=1
else
  remote_port=$DEFAULT_REMOTE_PORT
  remote_port_fixed=0
fi

# ---- the program that runs on the server --------------------------------------------------------
# Every value reaches the server inside this bash script, quoted with printf %q, and the script
# travels base64-encoded: the remote login shell (bash, zsh, fish, csh...) only ever sees
# [A-Za-z0-9+/=], so no path is interpreted by any shell.
doctor_src=""
[[ ! -r $PROJECT_DIR/utils/tbdoctor.py ]] || doctor_src=$(<"$PROJECT_DIR/utils/tbdoctor.py")

remote_program() {
  printf 'remote_dir=%q\nlogdir=%q\nenv_cmd=%q\nbase_port=%q\nport_fixed=%q\nport_tries=%q\ndoctor_src=%q\n' \
    "$remote_dir" "$logdir" "$env_cmd" "$remote_port" "$remote_port_fixed" "$PORT_TRIES" "$doctor_src"
  declare -f port_in_use http_answers tensorboard_answers  # the same helpers as here (common.sh)
  cat <<'REMOTE'
# Runs in bash on the server. Protocol on stdout: lines "@@serve_tb ready PORT PID LOGDIR",
# "@@serve_tb error MESSAGE", "@@serve_tb stopped"; any other line is for the user.
set -u
trap '' PIPE
exec 2>&1
say() { printf '@@serve_tb %s\n' "$*"; }
fail() { say "error $*"; exit 3; }
tb_pid="" tb_log=""

stop_tensorboard() {
  [[ -n $tb_pid ]] || return 0
  kill -TERM -- "-$tb_pid" 2>/dev/null
  # A watchdog makes sure a TensorBoard that ignores SIGTERM dies too.
  (sleep 10; kill -KILL -- "-$tb_pid") >/dev/null 2>&1 &
  local watchdog=$!
  wait "$tb_pid" 2>/dev/null
  # The data server exits when TensorBoard's pipe closes; wait for the whole group to be gone.
  local _
  for _ in {1..100}; do kill -0 -- "-$tb_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$tb_pid" 2>/dev/null
  kill "$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
  tb_pid=""
  rm -f -- "$tb_log"
}
trap stop_tensorboard EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# stdin is the ssh session; the client never writes to it, so "readable" means closed.
client_gone() { read -r -t 0 <&0; }
list_dir() { ls -lA -- "$1" 2>&1 | head -n 40 | sed 's/^/    /'; }

cd -- "$remote_dir" 2>/dev/null || fail "remote directory '$remote_dir' does not exist on the server (set --remote-dir; a relative one starts at $HOME)"
if [[ -n $env_cmd ]]; then
  set +u
  eval "$env_cmd" </dev/null
  status=$?
  set -u
  ((status == 0)) || fail "the --env command exited with status $status on the server: $env_cmd"
fi
tb=$(command -v tensorboard) ||
  fail "tensorboard not found on the server (PATH=$PATH); install it, or activate its environment with --env, e.g. --env 'source .venv/bin/activate' (runs in $PWD)"

[[ $logdir == /* ]] || logdir=$PWD/$logdir
if [[ ! -d $logdir ]]; then
  parent=$logdir
  while [[ ! -d $parent ]]; do parent=$(dirname -- "$parent"); done
  say "error log directory '$logdir' does not exist on the server (--logdir is relative to --remote-dir $PWD); $parent holds:"
  list_dir "$parent"
  exit 3
fi
if [[ -z $(find "$logdir" -name 'events.out.tfevents.*' -type f -print -quit 2>/dev/null) ]]; then
  say "error no event files under '$logdir' on the server, so TensorBoard would show \"You haven't written any data to your event files\"; it holds:"
  list_dir "$logdir"
  exit 3
fi

if ((port_fixed == 1)) && port_in_use "$base_port"; then
  fail "remote port $base_port is already in use on the server (choose another --remote-port, or leave it out to take the next free one)"
fi

# The python that runs tensorboard also runs the log doctor (it needs tensorboard's event reader).
py=""
IFS= read -r shebang <"$tb" || true
read -r -a words <<<"${shebang#\#!}"
if ((${#words[@]})); then
  if [[ ${words[0]##*/} == env ]]; then py=${words[1]:-}; else py=${words[0]}; fi
fi
for candidate in "$py" python3 python; do
  if [[ -n $candidate ]] && "$candidate" -c 'import tensorboard' >/dev/null 2>&1 </dev/null; then
    py=$candidate
    break
  fi
  py=""
done
if [[ -n $py && -n $doctor_src ]]; then
  # From /, so that nothing in the project directory shadows the tensorboard package.
  (cd / && "$py" -c "$doctor_src" --brief --port "$base_port" -- "$logdir" </dev/null)
fi

port=$base_port
while :; do
  if port_in_use "$port"; then
    ((port_fixed == 0)) || fail "remote port $port is already in use on the server (choose another --remote-port, or leave it out to take the next free one)"
  else
    tb_log=$(mktemp "${TMPDIR:-/tmp}/serve_tb.XXXXXX") || fail "cannot create a temporary file on the server"
    # set -m puts TensorBoard in its own process group, so that one kill reaches its data server too.
    set -m
    "$tb" --logdir "$logdir" --host 127.0.0.1 --port "$port" </dev/null >"$tb_log" 2>&1 &
    tb_pid=$!
    set +m
    until tensorboard_answers "$port"; do
      client_gone && exit 0
      kill -0 "$tb_pid" 2>/dev/null || break
      sleep 0.2
    done
    tensorboard_answers "$port" && break
    wait "$tb_pid" 2>/dev/null
    if ((port_fixed == 1)) || ! grep -q 'could not bind' "$tb_log"; then
      say "error tensorboard exited on the server: $(grep -v '^ *$' "$tb_log" | tail -n 1)"
      sed 's/^/    /' "$tb_log" | tail -n 20
      tb_pid=""
      exit 3
    fi
    tb_pid=""
  fi
  ((port < base_port + port_tries)) || fail "no free port on the server in $base_port-$port"
  port=$((port + 1))
done

say "ready $port $tb_pid $logdir"
# Wait for the client to go away; check every few seconds that TensorBoard is still alive.
while :; do
  IFS= read -r -t 5 _
  status=$?
  ((status == 0)) && continue
  ((status > 128)) || break
  kill -0 "$tb_pid" 2>/dev/null && continue
  say "error tensorboard exited on the server: $(grep -v '^ *$' "$tb_log" | tail -n 1)"
  exit 3
done
stop_tensorboard
say stopped
REMOTE
}

payload=$(remote_program | base64 | tr -d '\n')
# shellcheck disable=SC2016 # the single quotes are for the remote shell
remote_cmd='bash -c '\''eval "$(echo '"$payload"' | base64 -d)"'\'

# ---- the connection --------------------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/serve_tb.XXXXXX")
ssh_pid=""
control=(-o ControlPath="$tmp/control")
ssh_common=("${control[@]}" ${ssh_opts[@]+"${ssh_opts[@]}"}
  -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=3
  -o ExitOnForwardFailure=yes)

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  stop_remote
  rm -rf -- "$tmp"
}

# Closes the wrapper's stdin, which makes it stop TensorBoard, then waits for its word and for ssh.
# shellcheck disable=SC2317 # called from the EXIT trap
stop_remote() {
  [[ -n $ssh_pid ]] || return 0
  local line
  exec 3>&-
  while IFS= read -r -t 20 line <&4; do
    case $line in
      '@@serve_tb stopped') note "stopped the remote TensorBoard"; break ;;
      '@@serve_tb '*) ;;
      *) printf '%s\n' "$line" >&2 ;;
    esac
  done
  ssh "${ssh_common[@]}" -O exit "$host" >/dev/null 2>&1 || true
  local _
  for _ in {1..50}; do kill -0 "$ssh_pid" 2>/dev/null || break; sleep 0.1; done
  kill "$ssh_pid" 2>/dev/null || true
  wait "$ssh_pid" 2>/dev/null || true
  ssh_pid=""
}

trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

mkfifo "$tmp/in" "$tmp/out"
# A background job of a script ignores SIGINT, so Ctrl-C reaches only this script, which then stops
# the remote side in order. -T: no pty (the wrapper relies on its stdin, not on SIGHUP).
ssh -o ControlMaster=yes -o ControlPersist=no "${ssh_common[@]}" -T "$host" "$remote_cmd" \
  <"$tmp/in" >"$tmp/out" 2>"$tmp/ssh.err" &
ssh_pid=$!
exec 3>"$tmp/in" 4<"$tmp/out"

ssh_failure() {
  local rc=0 err
  wait "$ssh_pid" 2>/dev/null || rc=$?
  ssh_pid=""
  err=$(grep -v '^Warning: Permanently added' "$tmp/ssh.err" | grep -v '^ *$' | tail -n 1 || true)
  case $err in
    *"Permission denied"*)
      die "authentication to $host failed: $err (key-based only, BatchMode: load your key with ssh-add or set IdentityFile)" ;;
    *"Host key verification failed"* | *"IDENTIFICATION HAS CHANGED"*)
      die "the host key of $host is unknown or has changed: $err (connect once with plain ssh to check it)" ;;
    *"Could not resolve"* | *"Connection refused"* | *"timed out"* | *"No route to host"* | *"unreachable"* | *"Connection closed"* | *"Connection reset"*)
      die "cannot reach $host: $err" ;;
    *) die "ssh to $host failed (exit $rc): ${err:-ssh printed nothing}" ;;
  esac
}

# ---- remote start-up ------------------------------------------------------------------------------
ready=""
remote_error=""
while IFS= read -r line <&4; do
  case $line in
    '@@serve_tb ready '*) ready=${line#@@serve_tb ready } && break ;;
    '@@serve_tb error '*)
      remote_error=${line#@@serve_tb error }
      printf '%s: error: %s\n' "$PROG" "$remote_error" >&2
      ;;
    '@@serve_tb '*) ;;
    *) printf '%s\n' "$line" >&2 ;;
  esac
done
if [[ -z $ready ]]; then
  [[ -z $remote_error ]] || exit 1
  ssh_failure
fi
read -r remote_port remote_pid remote_logdir <<<"$ready"

# ---- the forward, added to the open connection -----------------------------------------------------
while :; do
  if ssh "${ssh_common[@]}" -O forward -L "127.0.0.1:$local_port:127.0.0.1:$remote_port" "$host" \
    >/dev/null 2>"$tmp/forward.err"; then
    break
  fi
  if ((local_port_fixed == 1)) || ((local_port >= DEFAULT_LOCAL_PORT + PORT_TRIES)); then
    die "cannot bind local port 127.0.0.1:$local_port: $(grep -i 'bind\|listen' "$tmp/ssh.err" | tail -n 1 || true)$(tail -n 1 "$tmp/forward.err")"
  fi
  local_port=$((local_port + 1))
done

until tensorboard_answers "$local_port"; do
  kill -0 "$ssh_pid" 2>/dev/null || ssh_failure
  sleep 0.2
done

url="http://localhost:$local_port/"
note "TensorBoard pid $remote_pid on $host:127.0.0.1:$remote_port serves $remote_logdir"
printf 'TensorBoard: %s\n' "$url"
note "press Ctrl-C to stop it"
if ((no_browser == 0)); then
  if command -v xdg-open >/dev/null; then
    xdg-open "$url" >/dev/null 2>&1 </dev/null &
  elif command -v open >/dev/null; then
    open "$url" >/dev/null 2>&1 </dev/null &
  else
    note "no xdg-open or open here: open $url yourself"
  fi
fi

# ---- running: until a signal (traps above) or the end of the connection -----------------------------
while IFS= read -r line <&4; do
  case $line in
    '@@serve_tb error '*) remote_error=${line#@@serve_tb error } ;;
    '@@serve_tb '*) ;;
    *) printf '%s\n' "$line" >&2 ;;
  esac
done
[[ -z $remote_error ]] || die "$remote_error"
ssh_pid_left=$ssh_pid
wait "$ssh_pid_left" 2>/dev/null || true
ssh_pid=""
die "the connection to $host closed: $(tail -n 1 "$tmp/ssh.err" 2>/dev/null || true) (the server stops TensorBoard when it notices)"
