# common.sh: helpers that serve_tb.sh, tunnel.sh and tb.sh share. Sourced, never run. The caller sets PROG;
# take_ssh_option also reads SSH_REFUSED_FLAGS and appends to the caller's ssh_opts array.
# shellcheck shell=bash

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

is_port() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }

# True when something accepts connections on 127.0.0.1:PORT (bash's /dev/tcp, no extra tools).
port_in_use() { (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port PORT: PORT, or the next port after it that nothing listens on (up to PORT_TRIES further).
free_port() {
  local port=$1
  while port_in_use "$port"; do
    ((port < $1 + PORT_TRIES)) || die "no free port on 127.0.0.1 in $1-$port"
    port=$((port + 1))
  done
  printf '%s\n' "$port"
}

# http_answers PORT PATH STATUS_GLOB: true when an HTTP server on 127.0.0.1:PORT answers GET PATH with a
# status line that matches STATUS_GLOB. serve_tb.sh also sends this function to the server.
http_answers() {
  (
    exec 9<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&9
    IFS= read -r -t 5 status <&9 || exit 1
    # shellcheck disable=SC2053  # $3 is a glob on purpose
    [[ $status == $3 ]]
  ) 2>/dev/null
}

# ssh options that take a value (from ssh's getopt string).
readonly SSH_ARG_FLAGS="bcDEeFIiJLlmOoPpQRSWw"

# Copies one ssh option cluster (e.g. -v, -p 22, -p22, -vJ jump) into ssh_opts and sets `used` to the
# number of arguments it took. Options in SSH_REFUSED_FLAGS would break the session and are refused.
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
