# serve_tb_remote.sh: the server side of serve_tb.sh. Never run here: serve_tb.sh sends it to the server
# over the ssh session's stdin, where `bash -c 'IFS= read -r -d "" p && eval "$p"'` reads and runs it,
# so the server's process list shows only that fixed command, never a path or a payload.
#
# What serve_tb.sh writes to our stdin, in order:
#   1. this program, preceded by the settings as hex (`*_hex=...`), then a NUL byte;
#   2. the log doctor's source (scripts/tbdoctor.py), then a NUL byte;
#   3. a heartbeat line every $heartbeat seconds until it goes away (EOF).
# What we write to stdout: protocol lines "@@serve_tb NONCE WORD ...", where NONCE came with the settings
# (a path cannot forge one), and any other line is for the user:
#   info TEXT | dir HEX (the project directory used) | row TEXT (--list) | ready PORT PID LOGDIR |
#   alive | error TEXT | done | stopped
# The server is Linux (bash >= 4, /proc); the laptop side is what must also run on macOS.
# shellcheck shell=bash disable=SC2154  # the *_hex settings come before this text
set -u
trap '' PIPE
exec 2>&1

unhex() { printf -v "$1" '%b' "$(printf '%s' "$2" | sed 's/../\\x&/g')"; }
remote_dir="" logdir="" env_cmd="" run_sel="" nonce="" project_name="" laptop_home=""
unhex remote_dir "$remote_dir_hex"
unhex project_name "$project_name_hex"
unhex laptop_home "$laptop_home_hex"
unhex logdir "$logdir_hex"
unhex env_cmd "$env_cmd_hex"
unhex run_sel "$run_sel_hex"
unhex nonce "$nonce_hex"
doctor_src=""
IFS= read -r -d '' doctor_src || true

say() { printf '@@serve_tb %s %s\n' "$nonce" "$*"; }
fail() { say "error $*"; exit 3; }
# A path as the user reads it: control characters (a newline...) shown as escapes, one line always.
shown() { local text=$1; [[ $text != *[[:cntrl:]]* ]] || printf -v text '%q' "$text"; printf '%s' "$text"; }
# shellcheck disable=SC2012 # a listing for people to read
list_dir() { ls -lA -- "$1" 2>&1 | head -n 40 | sed 's/^/    /'; }

tb_pid="" tb_log="" view=""
stop_tensorboard() {
  if [[ -n $tb_pid ]]; then
    # TensorBoard and its data server share a process group (set -m below): one signal reaches both.
    kill -TERM -- "-$tb_pid" 2>/dev/null
    local i
    for ((i = 0; i < 30; i++)); do kill -0 -- "-$tb_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$tb_pid" 2>/dev/null
    wait "$tb_pid" 2>/dev/null
    tb_pid=""
  fi
  [[ -z $tb_log ]] || rm -f -- "$tb_log"
  [[ -z $view ]] || rm -rf -- "$view"
  tb_log="" view=""
}
trap stop_tensorboard EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# `~` and `$HOME` at the start of a path mean this server's home; a relative path starts there too.
# shellcheck disable=SC2016,SC2088 # the literal text the user typed
expand_home() {
  local path=$1
  case $path in
    '~' | '$HOME' | '${HOME}') path=$HOME ;;
    '~/'*) path=$HOME/${path#'~/'} ;;
    '$HOME/'*) path=$HOME/${path#'$HOME/'} ;;
    '${HOME}/'*) path=$HOME/${path#'${HOME}/'} ;;
  esac
  printf '%s' "$path"
}
remote_dir=$(expand_home "$remote_dir")
logdir=$(expand_home "$logdir")

# A path that starts with the laptop's home (not this server's) is most often a ~ that the laptop's shell
# expanded: say so, and how to quote it.
laptop_home_hint() {
  [[ -n $laptop_home && $laptop_home != "$HOME" && ($1 == "$laptop_home" || $1 == "$laptop_home"/*) ]] || return 0
  printf "; it starts with the laptop's home %s: an unquoted ~ is expanded on the laptop, quote it ('~/%s') to mean the server's home" \
    "$(shown "$laptop_home")" "$(shown "${1#"$laptop_home"/}")"
}

# The project when the remembered or default directory is missing here: a directory named like the
# laptop's checkout under $HOME (4 levels at most, hidden ones skipped) that holds scripts/serve_tb.sh.
# One: it is used (and the laptop remembers it for next time). None or several: an error that says so.
find_project() {
  local found=() dir pattern names="" missing
  pattern=$(printf '%s' "$project_name" | sed 's/[][*?\\]/\\&/g') # the name, not a glob
  while IFS= read -r -d '' dir; do
    [[ ! -f $dir/scripts/serve_tb.sh ]] || found+=("$dir")
  done < <(find "$HOME" -mindepth 1 -maxdepth 4 -name '.*' -prune -o -type d -name "$pattern" -print0 2>/dev/null)
  missing="remote directory '$(shown "$remote_dir")' does not exist on the server"
  if ((${#found[@]} == 1)); then
    cd -- "${found[0]}" || fail "$missing, and '$(shown "${found[0]}")' cannot be entered"
    say "info remote directory $(shown "$PWD") (found on the server: $missing; remembered for this checkout and host, --remote-dir to change it)"
  elif ((${#found[@]} == 0)); then
    fail "$missing, and no directory named '$(shown "$project_name")' under $(shown "$HOME") (4 levels) holds scripts/serve_tb.sh: pass --remote-dir DIR once (it is remembered for this checkout and host)"
  else
    for dir in "${found[@]}"; do names+=" $(shown "$dir")"; done
    fail "$missing, and several directories look like the project:$names; choose one with --remote-dir (it is remembered for this checkout and host)"
  fi
}

cd -- "$HOME" 2>/dev/null || true
if ! cd -- "$remote_dir" 2>/dev/null; then
  [[ $remote_dir_from != given ]] ||
    fail "remote directory '$(shown "$remote_dir")' does not exist on the server (set --remote-dir; a relative one starts at $(shown "$HOME"))$(laptop_home_hint "$remote_dir")"
  find_project
elif [[ $remote_dir_from == remembered ]]; then
  say "info remote directory $(shown "$PWD") (remembered from the last session of this checkout on this host; --remote-dir to change it)"
fi
say "dir $(printf '%s' "$PWD" | od -An -v -tx1 | tr -d ' \n')" # for the laptop to remember

if [[ -n $env_cmd ]]; then
  set +u
  eval "$env_cmd" </dev/null
  status=$?
  set -u
  ((status == 0)) || fail "the --env command exited with status $status on the server: $(shown "$env_cmd")"
fi

# TensorBoard: the one --env provides, else the remote checkout's .venv, else PATH.
tb="" tb_from=""
if [[ -n $env_cmd ]] && tb=$(command -v tensorboard); then
  tb_from="--env"
elif [[ -x $PWD/.venv/bin/tensorboard ]]; then
  tb=$PWD/.venv/bin/tensorboard tb_from="$(shown "$PWD")/.venv"
elif tb=$(command -v tensorboard); then
  tb_from="PATH"
elif [[ $mode != list ]]; then
  fail "tensorboard not found on the server: not from --env, not in $(shown "$PWD")/.venv/bin, not on PATH ($PATH); run 'make install' there, or activate its environment with --env, e.g. --env 'source ~/miniconda3/bin/activate NAME'"
fi

# The python that runs tensorboard also runs the log doctor (it needs tensorboard's event reader).
py="" words=()
if [[ -n $tb ]]; then
  IFS= read -r shebang <"$tb" || true
  read -r -a words <<<"${shebang#\#!}"
  if ((${#words[@]})); then
    if [[ ${words[0]##*/} == env ]]; then py=${words[1]:-}; else py=${words[0]}; fi
  fi
fi
for candidate in "$py" python3 python; do
  if [[ -n $candidate ]] && "$candidate" -c 'import sys; assert sys.version_info >= (3, 8)' >/dev/null 2>&1 </dev/null; then
    py=$candidate
    break
  fi
  py=""
done
# From /, so that nothing in the project directory shadows the tensorboard package.
doctor() { [[ -n $py && -n $doctor_src ]] && (cd / && "$py" - "$@" <<<"$doctor_src"); }

[[ $logdir == /* ]] || logdir=$PWD/$logdir
if [[ ! -d $logdir ]]; then
  parent=$logdir
  while [[ ! -d $parent ]]; do parent=$(dirname -- "$parent"); done
  say "error log directory '$(shown "$logdir")' does not exist on the server (--logdir is relative to --remote-dir $(shown "$PWD"))$(laptop_home_hint "$logdir"); $(shown "$parent") holds:"
  list_dir "$parent"
  exit 3
fi
logdir=$(cd -- "$logdir" && pwd)

if [[ $mode == list ]]; then
  [[ -n $py ]] || fail "no python 3 on the server to list the runs with"
  say "info runs under $(shown "$logdir"), newest first:"
  doctor --list-runs -- "$logdir" | while IFS= read -r row; do say "row $row"; done
  say "done"
  exit 0
fi
say "info tensorboard $(shown "$tb") (from $tb_from)"

if [[ -n $run_sel ]]; then
  [[ -n $py ]] || fail "no python 3 on the server to pick runs with"
  picked=() base_logdir=$logdir
  while IFS= read -r -d '' run; do picked+=("$run"); done < <(doctor --pick "$run_sel" -- "$logdir")
  if ((${#picked[@]} == 0)); then
    say "error no run under '$(shown "$logdir")' matches --run $(shown "$run_sel") (runs with event files only); the runs there:"
    doctor --list-runs -- "$logdir" | sed 's/^/    /'
    exit 3
  elif [[ $run_sel == latest ]]; then
    logdir=${picked[0]}
  else
    # Several runs side by side: a directory of links to them, named as under the log directory.
    view=$(mktemp -d "${TMPDIR:-/tmp}/serve_tb_runs.XXXXXX") || fail "cannot create a temporary directory on the server"
    for run in "${picked[@]}"; do
      name=${run#"$base_logdir"/}
      [[ $run != "$base_logdir" ]] || name=${base_logdir##*/}
      mkdir -p -- "$view/$(dirname -- "$name")" && ln -s -- "$run" "$view/$name"
    done
    logdir=$view
  fi
  names=""
  for run in "${picked[@]}"; do names+=" $(shown "${run#"$base_logdir"/}")"; done
  say "info --run $(shown "$run_sel") picked ${#picked[@]} run(s):$names"
fi

if [[ -z $(find -L "$logdir" -name 'events.out.tfevents.*' -type f -print -quit 2>/dev/null) ]]; then
  say "error no event files under '$(shown "$logdir")' on the server, so TensorBoard would show \"You haven't written any data to your event files\"; it holds:"
  list_dir "$logdir"
  exit 3
fi

if ((port_fixed == 1)) && port_in_use "$base_port"; then
  fail "remote port $base_port is already in use on the server (choose another --remote-port, or leave it out to take the next free one)"
fi
# No port check (--port 0): the loop below takes the next free port itself, and the doctor cannot know
# which one it will be.
doctor --brief --port 0 -- "$logdir"

# owns_port PORT: true when TensorBoard's own process holds the listening socket of 127.0.0.1:PORT.
# Without /proc (not Linux) it cannot tell, and says yes: the log directory check below still holds.
owns_port() {
  [[ -r /proc/net/tcp ]] || return 0
  local hex inodes fd link
  hex=$(printf '%04X' "$1")
  inodes=" $(awk -v h="$hex" '$4 == "0A" { n = split($2, a, ":"); if (a[n] == h) printf "%s ", $10 }' \
    /proc/net/tcp /proc/net/tcp6 2>/dev/null)"
  for fd in /proc/"$tb_pid"/fd/*; do
    link=$(readlink "$fd" 2>/dev/null) || continue
    [[ $link == socket:* ]] || continue
    link=${link#socket:[}
    [[ $inodes != *" ${link%]} "* ]] || return 0
  done
  return 1
}
# serves_logdir PORT: true when the TensorBoard on PORT reports our log directory.
serves_logdir() {
  [[ -n $py ]] || return 0
  "$py" - "$1" "$logdir" <<'PY' 2>/dev/null
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/data/environment", timeout=5) as response:
    sys.exit(0 if json.load(response).get("data_location") == sys.argv[2] else 1)
PY
}
# Drains the heartbeats that came during the start-up; true when the laptop side closed the session.
client_gone() {
  while read -r -t 0; do
    IFS= read -r -t 1 _ || { (($? > 128)) || return 0; break; }
  done
  return 1
}

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
    # Ours when its own process holds the port and it serves our directory: another session's
    # TensorBoard that took the port first answers too, and must not be taken for ours.
    mine=0
    while kill -0 "$tb_pid" 2>/dev/null; do
      if tensorboard_answers "$port" && owns_port "$port" && serves_logdir "$port"; then
        mine=1
        break
      fi
      client_gone && exit 0
      sleep 0.2
    done
    ((mine == 0)) || break
    wait "$tb_pid" 2>/dev/null
    if ((port_fixed == 1)) || ! grep -q 'could not bind' "$tb_log"; then
      say "error tensorboard exited on the server: $(grep -v '^ *$' "$tb_log" | tail -n 1)"
      sed 's/^/    /' "$tb_log" | tail -n 20
      tb_pid=""
      exit 3
    fi
    tb_pid=""
    rm -f -- "$tb_log"
  fi
  ((port < base_port + port_tries)) || fail "no free port on the server in $base_port-$port"
  port=$((port + 1))
done

say "ready $port $tb_pid $(shown "$logdir")"
# Heartbeats both ways: we say "alive" every $heartbeat seconds and expect a line at least every
# $dead_after seconds; silence (a frozen laptop, a cut network) or EOF stops TensorBoard.
heard=$SECONDS
while :; do
  if IFS= read -r -t "$heartbeat" _; then
    heard=$SECONDS
  elif (($? <= 128)); then
    break # EOF: the laptop side closed the session
  fi
  ((SECONDS - heard < dead_after)) || break
  say alive || break
  if ! kill -0 "$tb_pid" 2>/dev/null; then
    say "error tensorboard exited on the server: $(grep -v '^ *$' "$tb_log" | tail -n 1)"
    exit 3
  fi
done
stop_tensorboard
say stopped
