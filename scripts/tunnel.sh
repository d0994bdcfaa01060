#!/usr/bin/env bash
# tunnel.sh: only the forward, for a TensorBoard (or anything else) that already runs on a server.
# It binds 127.0.0.1 here and reaches 127.0.0.1 there; Ctrl-C or SIGTERM closes it.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly PROG SCRIPT_DIR DEFAULT_REMOTE_PORT=6008 DEFAULT_LOCAL_PORT=16008 PORT_TRIES=50
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [ssh options] HOST [REMOTE_PORT [LOCAL_PORT]]

Forward http://127.0.0.1:LOCAL_PORT here to 127.0.0.1:REMOTE_PORT on HOST, until Ctrl-C.
HOST is any ssh destination (an alias from ~/.ssh/config, or user@host; jump hosts with -J).
  REMOTE_PORT   the server's port (default: $DEFAULT_REMOTE_PORT)
  LOCAL_PORT    the local port, bound on 127.0.0.1 only (default: $DEFAULT_LOCAL_PORT, or the next free
                one if taken; a LOCAL_PORT you give must be free)
Options starting with '-' go to ssh (-p 2222, -i key, -J jump, -o Option=value); -f -n -N -M -O -S -s
-W -G -V are refused. To start TensorBoard on the server as well, use scripts/serve_tb.sh.
EOF
}

# Does anything answer HTTP at 127.0.0.1:PORT? (through the tunnel: on the server)
answers_http() { http_answers "$1" / 'HTTP/*'; }

readonly SSH_REFUSED_FLAGS="fnNMOSsWGV"  # would break the forward (take_ssh_option, common.sh)
readonly ACCEPT_NEW_OPTION="-o StrictHostKeyChecking=accept-new" # (explain_ssh_error, common.sh)
ssh_opts=()
positional=()


while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --*) die "unknown option $1 (see --help)" ;;
    -?*) take_ssh_option "$@"; shift "$used" ;;
    *) positional+=("$1"); shift ;;
  esac
done
((${#positional[@]} >= 1)) || die "no HOST given (see --help)"
((${#positional[@]} <= 3)) || die "too many arguments: ${positional[*]:3} (see --help)"
host=${positional[0]}
remote_port=${positional[1]:-$DEFAULT_REMOTE_PORT}
local_port=${positional[2]:-}
is_port "$remote_port" || die "REMOTE_PORT must be a port number (1-65535), got '$remote_port'"
command -v ssh >/dev/null || die "ssh (the OpenSSH client) is not installed here"

if [[ -n $local_port ]]; then
  is_port "$local_port" || die "LOCAL_PORT must be a port number (1-65535), got '$local_port'"
  ! port_in_use "$local_port" || die "local port $local_port is already in use on 127.0.0.1"
else
  local_port=$(free_port "$DEFAULT_LOCAL_PORT")
fi

err=$(mktemp "${TMPDIR:-/tmp}/tunnel.XXXXXX")
ssh_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  if [[ -n $ssh_pid ]]; then
    kill "$ssh_pid" 2>/dev/null || true
    wait "$ssh_pid" 2>/dev/null || true
  fi
  rm -f -- "$err"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

ssh ${ssh_opts[@]+"${ssh_opts[@]}"} -o BatchMode=yes -o ConnectTimeout=10 -o ExitOnForwardFailure=yes \
  -o ServerAliveInterval=15 -o ServerAliveCountMax=3 -N -T \
  -L "127.0.0.1:$local_port:127.0.0.1:$remote_port" "$host" </dev/null 2>"$err" &
ssh_pid=$!

ssh_failed() {
  local rc=0 message
  wait "$ssh_pid" 2>/dev/null || rc=$?
  ssh_pid=""
  message=$(grep -v '^Warning: Permanently added' "$err" | grep -v '^ *$' | tail -n 1 || true)
  case $message in
    *"bind"* | *"forwarding"*) die "cannot bind local port 127.0.0.1:$local_port: $message" ;;
    "") die "cannot reach $host: ssh exited with status $rc" ;;
  esac
  explain_ssh_error "$host" "$err" # (common.sh: the same lines as serve_tb.sh's)
  ((${#ssh_error_details})) || die "$ssh_error"
  printf '%s: error: %s\n%s\n' "$PROG" "$ssh_error" "$ssh_error_details" >&2
  exit 1
}

until port_in_use "$local_port"; do
  kill -0 "$ssh_pid" 2>/dev/null || ssh_failed
  sleep 0.2
done
printf 'Tunnel: http://127.0.0.1:%s/ -> %s:127.0.0.1:%s\n' "$local_port" "$host" "$remote_port"
if ! answers_http "$local_port"; then
  printf '%s: note: nothing answers HTTP on %s:127.0.0.1:%s yet\n' "$PROG" "$host" "$remote_port" >&2
fi
printf '%s: press Ctrl-C to close the tunnel\n' "$PROG" >&2

wait "$ssh_pid" || true
ssh_pid=""
die "the connection to $host closed: $(tail -n 1 "$err")"
