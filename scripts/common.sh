# common.sh: helpers that serve_tb.sh, tunnel.sh and tb.sh share. Sourced, never run. The caller sets PROG;
# take_ssh_option also reads SSH_REFUSED_FLAGS and appends to the caller's ssh_opts array.
# Laptop side: bash 3.2 and BSD tools too (macOS); tools/check_portability.py guards it.
# shellcheck shell=bash

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

# Native Windows shells (Git Bash, MSYS2, Cygwin) lack what the scripts rely on (fifos, ssh's
# ControlMaster, process groups); WSL is a Linux and works.
refuse_native_windows() {
  case $(uname -s 2>/dev/null) in
    MINGW* | MSYS* | CYGWIN* | Windows*)
      die "native Windows shells (Git Bash, MSYS2, Cygwin) are not supported: run it inside WSL (see docs/remote_tensorboard.md)" ;;
  esac
}

# shown_line TEXT: prints TEXT, which came from the server, as one line for the terminal: control
# characters (an escape sequence, a carriage return, a newline in a directory name) shown as ^X, as
# `cat -v` does, so that nothing from the server drives the terminal; tabs and non-ASCII text stay.
shown_line() {
  local text=$1 out="" c code i carets='@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\]^_'
  if [[ $text != *[[:cntrl:]]* ]]; then
    printf '%s\n' "$text"
    return
  fi
  for ((i = 0; i < ${#text}; i++)); do
    c=${text:i:1}
    case $c in
      $'\t') out+=$c ;;
      [[:cntrl:]])
        code=$(printf '%d' "'$c")
        if ((code < 32)); then out+="^${carets:code:1}"; else out+='^?'; fi ;;
      *) out+=$c ;;
    esac
  done
  printf '%s\n' "$out"
}

# is_port TEXT: true when TEXT is a decimal port number 1-65535. Checked as a string first (digits only,
# at most 5 significant), so that no arithmetic ever sees a number that would overflow.
is_port() {
  local digits=$1
  case $digits in '' | *[!0-9]*) return 1 ;; esac
  while [[ $digits == 0?* ]]; do digits=${digits#0}; done
  ((${#digits} <= 5)) && ((10#$digits >= 1 && 10#$digits <= 65535))
}

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
# status line that matches STATUS_GLOB.
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

# shell_word TEXT: TEXT as one shell word, for a command line printed for the user to paste.
shell_word() {
  local q="'"
  case $1 in
    '' | *[!A-Za-z0-9_./:@%+=,-]*) printf "'%s'" "${1//$q/$q\\$q$q}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# known_hosts_config HOST: what ssh itself makes of its configuration and the caller's ssh_opts for HOST
# (ssh -G). Sets kh_name, the name under which known_hosts holds HOST's key (HostKeyAlias, else the
# resolved HostName, as [name]:port for a port other than 22: what ssh-keygen -R and -F need, not an
# alias of ~/.ssh/config), and kh_files, the known_hosts files ssh reads, one a line.
# shellcheck disable=SC2034 # the results are for the caller
known_hosts_config() {
  local config name port alias
  kh_name="" kh_files=""
  config=$(ssh -G ${ssh_opts[@]+"${ssh_opts[@]}"} "$1" </dev/null 2>/dev/null) || return 1
  name=$(printf '%s\n' "$config" | awk '$1 == "hostname" { print $2; exit }')
  port=$(printf '%s\n' "$config" | awk '$1 == "port" { print $2; exit }')
  alias=$(printf '%s\n' "$config" | awk '$1 == "hostkeyalias" { print $2; exit }')
  # (a path with a space in it is not told apart: ssh -G does not quote it)
  kh_files=$(printf '%s\n' "$config" |
    awk '$1 == "userknownhostsfile" || $1 == "globalknownhostsfile" { for (i = 2; i <= NF; i++) print $i }')
  if [[ -n $alias && $alias != none ]]; then
    kh_name=$alias
  elif [[ -z $port || $port == 22 ]]; then
    kh_name=$name
  else
    kh_name="[$name]:$port"
  fi
  [[ -n $kh_name ]]
}

# host_key_known: true when one of kh_files holds a key for kh_name (set by known_hosts_config).
host_key_known() {
  local file
  while IFS= read -r file; do
    [[ -n $file && -r $file ]] || continue
    ! ssh-keygen -F "$kh_name" -f "$file" >/dev/null 2>&1 || return 0
  done <<<"$kh_files"
  return 1
}

# explain_ssh_error HOST ERRFILE: sets ssh_error (one line for the user) and ssh_error_fatal (1 when
# retrying cannot help: authentication, host keys) from what ssh wrote to ERRFILE. For a changed host
# key, ssh_error_details holds ssh's fingerprint lines. Reads the caller's ssh_opts (known_hosts_config)
# and ACCEPT_NEW_OPTION (how the caller is told to trust a new key; default --accept-new).
# shellcheck disable=SC2034 # the results are for the caller
explain_ssh_error() {
  local host=$1 file=$2 last offending remove
  ssh_error_fatal=1
  ssh_error_details=""
  last=$(grep -v '^Warning: Permanently added' "$file" 2>/dev/null | grep -v '^ *$' | tail -n 1 || true)
  if grep -q 'IDENTIFICATION HAS CHANGED' "$file" 2>/dev/null; then
    # The command that removes the old key: the name known_hosts holds it under, and the file ssh found
    # it in (named only when it is not ssh-keygen's default).
    known_hosts_config "$host" || kh_name=$host
    remove="ssh-keygen -R $(shell_word "$kh_name")"
    offending=$(sed -n 's/^Offending .* key in \(.*\):[0-9][0-9]*[[:space:]]*$/\1/p' "$file" | head -n 1)
    [[ -z $offending || $offending == "${HOME:-}/.ssh/known_hosts" ]] || remove+=" -f $(shell_word "$offending")"
    ssh_error="the host key of $host has CHANGED (possible man-in-the-middle): ssh refused to connect; if the server was reinstalled, check the new fingerprint with its admin, then remove the old key with: $remove"
    ssh_error_details=$(grep -i -e 'fingerprint' -e '^SHA256:' -e '^MD5:' -e 'Offending' "$file" | sed 's/^/    /')
  elif grep -q -e 'host key is known' -e 'No .* host key is known' -e 'authenticity of host' "$file" 2>/dev/null ||
    { [[ $last == *"Host key verification failed"* ]] && known_hosts_config "$host" && ! host_key_known; }; then
    # The second test: with ssh's default StrictHostKeyChecking=ask and no terminal to ask on, ssh says
    # only "Host key verification failed."; no known_hosts file that holds the host means an unknown key.
    ssh_error="unknown host key for $host: ssh has never seen this server; check its fingerprint and connect once with plain ssh, or pass ${ACCEPT_NEW_OPTION:---accept-new} to trust it on first use"
  else
    case $last in
      *"Permission denied"*)
        ssh_error="authentication to $host failed: $last (keys only, no password prompt: load your key with ssh-add or set IdentityFile)" ;;
      *"Host key verification failed"*)
        ssh_error="the host key of $host could not be verified: $last" ;;
      *"Could not resolve"* | *"Connection refused"* | *"timed out"* | *"No route to host"* | *"unreachable"* | *"Connection closed"* | *"Connection reset"* | *"Broken pipe"*)
        ssh_error_fatal=0
        ssh_error="cannot reach $host: $last" ;;
      *)
        ssh_error_fatal=0
        ssh_error="ssh to $host failed: ${last:-ssh printed nothing}" ;;
    esac
  fi
}
