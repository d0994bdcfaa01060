#!/usr/bin/env bash
# serve_tb.sh: a remote server's TensorBoard in the local browser, in one command. The laptop side.
#
# One ssh connection (a ControlMaster, so that the forward can be added once the remote port is known)
# runs scripts/serve_tb_remote.sh on the server, sent over the session's stdin: the server's process
# list shows a fixed bootstrap command, never a path or a payload. The remote side starts TensorBoard
# on 127.0.0.1, checks that the TensorBoard answering on its port is its own, and stops it when the
# session ends. Both sides send a heartbeat: a frozen laptop or a cut network stops the remote
# TensorBoard within 30 s, and this side reconnects to the same local URL when the connection dies.
# Runs with bash 3.2 and BSD tools (macOS) too: tools/check_portability.py guards that.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=${SCRIPT_DIR%/*}
readonly PROG SCRIPT_DIR PROJECT_DIR
readonly DEFAULT_LOCAL_PORT=16008 DEFAULT_REMOTE_PORT=6008 PORT_TRIES=50 DEFAULT_HEARTBEAT=5
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"
refuse_native_windows

usage() {
  cat <<EOF
Usage: $PROG [options] [ssh options] HOST

Start TensorBoard on HOST, forward it to this machine and open it in the browser. HOST is any ssh
destination: an alias from ~/.ssh/config or user@host (jump hosts through ssh's config or -J).
Ctrl-C, SIGTERM, SIGHUP stop the remote TensorBoard and its data server; a lost connection is
reconnected (same local URL) unless --no-reconnect.

Options (each can also be set by the environment variable in brackets):
  --logdir DIR        remote log directory, absolute, relative to --remote-dir, or starting with
                      ~ or \$HOME for the remote home [SERVE_TB_LOGDIR] (default: outputs)
  --remote-dir DIR    remote project directory, absolute or relative to the remote home
                      [SERVE_TB_REMOTE_DIR] (default: the one that served this checkout on HOST
                      last time, else this checkout's path relative to \$HOME, here:
                      $(default_remote_dir); when that is missing, a directory of the same name
                      under the remote home that holds scripts/serve_tb.sh). Quote a ~ ('~/proj').
  --env CMD           shell command run on HOST before tensorboard, in --remote-dir [SERVE_TB_ENV]
                      (default: none; tensorboard is taken from --remote-dir's .venv, else PATH)
  --run NAME          serve only run NAME under --logdir: 'latest' (the newest run), or a glob
                      matched against run names (several runs side by side) [SERVE_TB_RUN]
  --list              list the runs under --logdir (name, date, size, event files) and exit
  --local-port N      local port, bound on 127.0.0.1 [SERVE_TB_LOCAL_PORT]
                      (default: $DEFAULT_LOCAL_PORT, or the next free one if taken)
  --remote-port N     TensorBoard's port on HOST, bound on 127.0.0.1 [SERVE_TB_REMOTE_PORT]
                      (default: $DEFAULT_REMOTE_PORT, or the next free one if taken)
  --heartbeat S       seconds between heartbeats; a connection silent for 4 of them is dead
                      [SERVE_TB_HEARTBEAT] (default: $DEFAULT_HEARTBEAT)
  --no-reconnect      exit when the connection is lost instead of reconnecting
  --accept-new        trust HOST's key on first use (ssh's StrictHostKeyChecking=accept-new);
                      a changed key is still refused
  --no-browser        only print the URL [SERVE_TB_NO_BROWSER=1]
  -h, --help          show this help

A port given with --local-port or --remote-port is used as is: the script fails if it is taken.
Any other option starting with '-' goes to ssh (e.g. -J jump, -p 2222, -i key, -o Option=value);
-f -n -N -t -M -O -S -s -W -G -V are refused because they would break the session.

The URL is printed on a line that contains http://127.0.0.1:PORT (not localhost, which may reach
another program on [::1]:PORT); it runs until stopped. Exit status:
130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP, 1 on an error (a line "$PROG: error: ...").
More in docs/remote_tensorboard.md.
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
run_sel=${SERVE_TB_RUN:-}
local_port=${SERVE_TB_LOCAL_PORT:-}
remote_port=${SERVE_TB_REMOTE_PORT:-}
heartbeat=${SERVE_TB_HEARTBEAT:-$DEFAULT_HEARTBEAT}
no_browser=${SERVE_TB_NO_BROWSER:-0}
mode=serve reconnect=1 accept_new=0
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
    --run) need_value "$@"; run_sel=$2; shift 2 ;;
    --run=*) run_sel=${1#*=}; shift ;;
    --list) mode=list; shift ;;
    --local-port) need_value "$@"; local_port=$2; shift 2 ;;
    --local-port=*) local_port=${1#*=}; shift ;;
    --remote-port) need_value "$@"; remote_port=$2; shift 2 ;;
    --remote-port=*) remote_port=${1#*=}; shift ;;
    --heartbeat) need_value "$@"; heartbeat=$2; shift 2 ;;
    --heartbeat=*) heartbeat=${1#*=}; shift ;;
    --no-reconnect) reconnect=0; shift ;;
    --accept-new) accept_new=1; shift ;;
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
[[ $mode == serve || -z $run_sel ]] || die "give either --list or --run, not both"
case $no_browser in
  1 | true | yes) no_browser=1 ;;
  0 | false | no | "") no_browser=0 ;;
  *) die "SERVE_TB_NO_BROWSER must be 1 or 0, got '$no_browser'" ;;
esac
# Ports are checked as decimal strings before any arithmetic: 18446744073709559696 is no port 8080.
for name in local_port remote_port; do
  value=${!name}
  [[ -z $value ]] || is_port "$value" || die "--${name/_/-} must be a port number (1-65535), got '$value'"
done
case $heartbeat in '' | *[!0-9]* | 0*) die "--heartbeat must be a whole number of seconds (1-60), got '$heartbeat'" ;; esac
((${#heartbeat} <= 2 && heartbeat <= 60)) || die "--heartbeat must be a whole number of seconds (1-60), got '$heartbeat'"
dead_after=$((4 * heartbeat))
command -v ssh >/dev/null || die "ssh (the OpenSSH client) is not installed here"

# ---- the local port: checked before connecting, so a taken port fails fast -----------------------
local_port_fixed=0 remote_port_fixed=0
if [[ -n $local_port ]]; then
  local_port=$((10#$local_port))
  ! port_in_use "$local_port" ||
    die "local port $local_port is already in use on 127.0.0.1 (choose another --local-port, or leave it out to take the next free one)"
  local_port_fixed=1
elif [[ $mode == serve ]]; then
  local_port=$(free_port "$DEFAULT_LOCAL_PORT")
fi
if [[ -n $remote_port ]]; then
  remote_port=$((10#$remote_port))
  remote_port_fixed=1
else
  remote_port=$DEFAULT_REMOTE_PORT
fi
base_remote_port=$remote_port

# ---- what the server gets on stdin (see the top of serve_tb_remote.sh) -----------------------------
# Every value travels as hex, so that no shell (the remote login shell, or bash itself) reads a path
# as code, and the protocol lines carry a random nonce that no path or program output can forge.
hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }

# ---- the remote project directory -------------------------------------------------------------------
# Given (--remote-dir), else the one that served this checkout on HOST last time (remembered here, as
# hex, after each session that started), else this checkout's path relative to $HOME. A remembered or
# default one that is missing on the server makes the server look for the project (serve_tb_remote.sh).
state_file=${XDG_STATE_HOME:-${HOME:-/nonexistent}/.local/state}/serve_tb/remote_dirs
state_key="$(hex "$PROJECT_DIR") $(hex "$host")"
remote_dir_from=given
if [[ -z $remote_dir ]]; then
  remote_dir_hex=$(awk -v key="$state_key" '$1 " " $2 == key { dir = $3 } END { print dir }' "$state_file" 2>/dev/null || true)
  if [[ -n $remote_dir_hex && $remote_dir_hex != *[!0-9a-f]* ]]; then
    remote_dir_from=remembered
  else
    remote_dir_hex=$(hex "$(default_remote_dir)") remote_dir_from=default
  fi
else
  remote_dir_hex=$(hex "$remote_dir")
fi
# remember_remote_dir: after a session started, the directory the server used (sent as hex) is the one
# for this checkout and HOST next time. Best effort: a read-only home only loses the memory.
served_dir_hex=""
remember_remote_dir() {
  local new
  [[ -n $served_dir_hex && $served_dir_hex != *[!0-9a-f]* ]] || return 0
  mkdir -p -- "${state_file%/*}" 2>/dev/null || return 0
  new=$(mktemp "${state_file%/*}/remote_dirs.XXXXXX" 2>/dev/null) || return 0
  if { awk -v key="$state_key" '$1 " " $2 != key' "$state_file" 2>/dev/null || true
    printf '%s %s\n' "$state_key" "$served_dir_hex"; } >"$new"; then
    mv -f -- "$new" "$state_file" 2>/dev/null || rm -f -- "$new"
  else
    rm -f -- "$new"
  fi
}
nonce=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
tag="@@serve_tb $nonce"
# shellcheck disable=SC2016 # the single quotes are for the remote shell
readonly BOOTSTRAP='bash -c '\''IFS= read -r -d "" p && eval "$p"'\'

# A short directory: it holds ssh's control socket, whose path must stay under 104 bytes on macOS.
tmp_root=${TMPDIR:-/tmp}
((${#tmp_root} <= 60)) || tmp_root=/tmp
tmp_root=${tmp_root%/}
# Directories of earlier runs that were killed with -9 (nothing else skips the cleanup below).
for old in "$tmp_root"/serve_tb.*; do
  [[ -O $old && -f $old/pid ]] || continue
  kill -0 "$(cat "$old/pid" 2>/dev/null || echo 0)" 2>/dev/null || rm -rf -- "$old"
done
# shellcheck source=scripts/serve_tb_session.sh
source "$SCRIPT_DIR/serve_tb_session.sh"
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
trap '' PIPE # a write to a dead connection fails (and is noticed) instead of killing us
tmp=$(mktemp -d "$tmp_root/serve_tb.XXXXXX")
echo "$$" >"$tmp/pid"

{
  printf 'remote_dir_hex=%s\nlogdir_hex=%s\nenv_cmd_hex=%s\nrun_sel_hex=%s\nnonce_hex=%s\n' \
    "$remote_dir_hex" "$(hex "$logdir")" "$(hex "$env_cmd")" "$(hex "$run_sel")" "$(hex "$nonce")"
  printf 'remote_dir_from=%s\nproject_name_hex=%s\nlaptop_home_hex=%s\n' \
    "$remote_dir_from" "$(hex "${PROJECT_DIR##*/}")" "$(hex "${HOME:-}")"
  printf 'mode=%s\nbase_port=%s\nport_fixed=%s\nport_tries=%s\nheartbeat=%s\ndead_after=%s\n' \
    "$mode" "$base_remote_port" "$remote_port_fixed" "$PORT_TRIES" "$heartbeat" "$dead_after"
  declare -f port_in_use http_answers tensorboard_answers # the same helpers as here (common.sh)
  cat "$SCRIPT_DIR/serve_tb_remote.sh"
  printf '\0'
  [[ ! -r $SCRIPT_DIR/tbdoctor.py ]] || cat "$SCRIPT_DIR/tbdoctor.py"
  printf '\0'
} >"$tmp/payload"

ssh_common=(-o ControlPath="$tmp/control" ${ssh_opts[@]+"${ssh_opts[@]}"})
((accept_new == 0)) || ssh_common+=(-o StrictHostKeyChecking=accept-new)
ssh_common+=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval="$heartbeat"
  -o ServerAliveCountMax=3 -o ExitOnForwardFailure=yes)

# ---- the first connection: any failure is final -------------------------------------------------
if ! connect first; then
  ((${#ssh_error_details})) || die "$fail_msg"
  printf '%s: error: %s\n%s\n' "$PROG" "$fail_msg" "$ssh_error_details" >&2
  exit 1
fi
remember_remote_dir
[[ $mode == serve ]] || exit 0

# 127.0.0.1, not localhost: the forward listens on 127.0.0.1 only, and a browser tries localhost on [::1]
# first, where another program may listen on the same port.
url="http://127.0.0.1:$local_port/"
note "TensorBoard pid $remote_pid on $host:127.0.0.1:$remote_port serves $remote_logdir"
printf 'TensorBoard: %s\n' "$url"
note "press Ctrl-C to stop it"
if ((no_browser == 0)); then
  if command -v xdg-open >/dev/null; then
    xdg-open "$url" >/dev/null 2>&1 </dev/null 3>&- 4>&- &
  elif command -v open >/dev/null; then
    open "$url" >/dev/null 2>&1 </dev/null 3>&- 4>&- &
  else
    note "no xdg-open or open here: open $url yourself"
  fi
fi

# ---- running: until a signal (traps above); a lost connection is reconnected ----------------------
while :; do
  watch_session
  ((reconnect == 1)) || die "the connection to $host was lost: $lost (--no-reconnect; the server stops TensorBoard when it notices)"
  lost_at=$SECONDS delay=1 attempt=0
  teardown
  while :; do
    attempt=$((attempt + 1))
    pause "$delay"
    if connect again; then
      note "reconnected to $host after $((SECONDS - lost_at)) s ($lost): $url serves again (TensorBoard pid $remote_pid on 127.0.0.1:$remote_port)"
      break
    fi
    ((fail_fatal == 0)) || die "cannot reconnect: $fail_msg"
    delay=$((delay * 2))
    ((delay <= 30)) || delay=30
    note "reconnect attempt $attempt failed ($fail_msg); next try in $delay s (Ctrl-C to stop)"
  done
done
