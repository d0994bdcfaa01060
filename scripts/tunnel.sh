#!/usr/bin/env bash
# tunnel.sh: only the forward, for a TensorBoard (or anything else) that already runs on a server.
# It binds 127.0.0.1 here and reaches 127.0.0.1 there; Ctrl-C or SIGTERM closes it.
set -euo pipefail

PROG=${0##*/}
readonly PROG DEFAULT_REMOTE_PORT=6008 DEFAULT_LOCAL_PORT=16008 PORT_TRIES=50

usage() {
  cat <<EOF
Usage: $PROG [ssh options] HOST [REMOTE_PORT [LOCAL_PORT]]

Forward http://localhost:LOCAL_PORT here to 127.0.0.1:REMOTE_PORT on HOST, until Ctrl-C.
HOST is any ssh destination (an alias from ~/.ssh/config, or user@host; jump hosts with -J).
  REMOTE_PORT   the server's port (default: $DEFAULT_REMOTE_PORT)
  LOCAL_PORT    the local port, bound on 127.0.0.1 only (default: $DEFAULT_LOCAL_PORT, or the next free
                one if taken; a LOCAL_PORT you give must be free)
Options starting with '-' go to ssh (-p 2222, -i key, -J jump, -o Option=value); -f -n -N -M -O -S -s
-W -G -V are refused. To start TensorBoard on the server as well, use scripts/serve_tb.sh.
EOF
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

is_port() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
port_in_use() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Does anything answer HTTP at 127.0.0.1:PORT? (through the tunnel: on the server)
answers_http() {
  (
    exec 9<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' >&9
    IFS= read -r -t 5 status <&9 || exit 1
    [[ $status == HTTP/* ]]
  ) 2>/dev/null
}

readonly SSH_ARG_FLAGS="bcDEeFIiJLlmOoPpQRSWw" SSH_REFUSED_FLAGS="fnNMOSsWGV"
ssh_opts=()
positional=()

# Copies one ssh option cluster (-v, -p 22, -p22, -vJ jump) into ssh_opts; sets `used`.
take_ssh_option() {
  local cluster=$1 i c
  used=1
  for ((i = 1; i < ${#cluster}; i++)); do
    c=${cluster:i:1}
    [[ $SSH_REFUSED_FLAGS != *"$c"* ]] || die "ssh option -$c cannot be used with $PROG (see --help)"
    if [[ $SSH_ARG_FLAGS == *"$c"* ]]; then
      if ((i + 1 == ${#cluster})); then
        (($# >= 2)) || die "ssh option -$c needs a value"
        used=2
      fi
      break
    fi
  done
  ssh_opts+=("${@:1:used}")
}

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
  local_port=$DEFAULT_LOCAL_PORT
  while port_in_use "$local_port"; do
    ((local_port < DEFAULT_LOCAL_PORT + PORT_TRIES)) || die "no free local port in $DEFAULT_LOCAL_PORT-$local_port"
    local_port=$((local_port + 1))
  done
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
    *"Permission denied"*) die "authentication to $host failed: $message (key-based only: ssh-add your key)" ;;
    *"Host key verification failed"*) die "the host key of $host is unknown or has changed: $message" ;;
    *"bind"* | *"forwarding"*) die "cannot bind local port 127.0.0.1:$local_port: $message" ;;
    *) die "cannot reach $host: ${message:-ssh exited with status $rc}" ;;
  esac
}

until port_in_use "$local_port"; do
  kill -0 "$ssh_pid" 2>/dev/null || ssh_failed
  sleep 0.2
done
printf 'Tunnel: http://localhost:%s/ -> %s:127.0.0.1:%s\n' "$local_port" "$host" "$remote_port"
if ! answers_http "$local_port"; then
  printf '%s: note: nothing answers HTTP on %s:127.0.0.1:%s yet\n' "$PROG" "$host" "$remote_port" >&2
fi
printf '%s: press Ctrl-C to close the tunnel\n' "$PROG" >&2

wait "$ssh_pid" || true
ssh_pid=""
die "the connection to $host closed: $(tail -n 1 "$err")"
