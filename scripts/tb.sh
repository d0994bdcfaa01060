#!/usr/bin/env bash
# tb.sh: a local TensorBoard on a free port, bound to 127.0.0.1 only, for a run or for all of them.
# It checks the log directory first (a missing one, or one without event files, fails with the reason)
# and passes TensorBoard an absolute path, so what it serves does not depend on where it was started.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=${SCRIPT_DIR%/*}
readonly PROG SCRIPT_DIR PROJECT_DIR DEFAULT_PORT=6006 PORT_TRIES=50
# shellcheck source=scripts/common.sh
source "$SCRIPT_DIR/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [--port N] [--all] [LOGDIR]

Start TensorBoard on http://127.0.0.1:PORT (127.0.0.1 only) until Ctrl-C. It serves
  LOGDIR        when given (made absolute);
  --all         the whole outputs/ tree, every run side by side;
  otherwise     the newest run under outputs/ (the run that holds the newest event file).
outputs/ is ./outputs when it exists, else the checkout's outputs/ ($PROJECT_DIR/outputs).
  --port N      the port [TB_PORT] (default: $DEFAULT_PORT, or the next free one if taken;
                a port you give must be free)
  -h, --help    show this help
TensorBoard comes from the checkout's .venv when it has one, else from PATH.
For a TensorBoard on a remote server, see scripts/serve_tb.sh.
EOF
}


port=${TB_PORT:-}
all=0
logdir=""
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --port) (($# >= 2)) || die "--port needs a value"; port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --all) all=1; shift ;;
    --) shift; (($# == 1)) || die "one LOGDIR after --"; logdir=$1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z $logdir ]] || die "only one LOGDIR can be given (see --help)"; logdir=$1; shift ;;
  esac
done
[[ -z $logdir || $all == 0 ]] || die "give either LOGDIR or --all, not both"
# Bad arguments first, whatever the directory holds.
[[ -z $port ]] || is_port "$port" || die "--port must be a port number (1-65535), got '$port'"

if [[ -x $PROJECT_DIR/.venv/bin/tensorboard ]]; then
  tensorboard=$PROJECT_DIR/.venv/bin/tensorboard
else
  tensorboard=$(command -v tensorboard) || die "tensorboard not found: run 'make install', or activate the environment that has it"
fi

# The python next to tensorboard has tensorboard's event reader, for the log doctor.
python=${tensorboard%/*}/python
[[ -x $python ]] || python=python3

if [[ -z $logdir ]]; then
  outputs=$PROJECT_DIR/outputs
  [[ ! -d outputs ]] || outputs=$PWD/outputs
  [[ -d $outputs ]] || die "no LOGDIR given and no outputs/ directory here or in $PROJECT_DIR: train first (make train), or pass LOGDIR"
  logdir=$outputs
  if ((all == 0)); then
    # The newest event file names the newest run: its directory, or the run directory above tb/.
    newest=$("$python" - "$outputs" <<'PY'
import os, sys
found = [os.path.join(d, f) for d, _, files in os.walk(sys.argv[1]) for f in files if "events.out.tfevents." in f]
print(max(found, key=os.path.getmtime) if found else "")
PY
)
    if [[ -n $newest ]]; then
      logdir=${newest%/*}
      [[ ${logdir##*/} != tb ]] || logdir=${logdir%/*}
    fi
  fi
fi

[[ -d $logdir ]] || die "log directory '$logdir' does not exist (relative paths start at $PWD)"
logdir=$(cd -- "$logdir" && pwd)
if [[ -z $(find "$logdir" -type f -name 'events.out.tfevents.*' -print -quit 2>/dev/null) ]]; then
  printf '%s: error: no event files under %s, so TensorBoard would show "You haven'\''t written any data to your event files"; it holds:\n' \
    "$PROG" "$logdir" >&2
  # shellcheck disable=SC2012 # a listing for people to read
  ls -lA -- "$logdir" | head -n 40 | sed 's/^/    /' >&2
  exit 1
fi

if [[ -n $port ]]; then
  ! port_in_use "$port" || die "port $port is already in use on 127.0.0.1 (choose another --port, or leave it out)"
else
  port=$(free_port "$DEFAULT_PORT")
fi

# The log doctor's summary (runs, tags, last write) and any problem it sees; it never stops the start.
if [[ -r $SCRIPT_DIR/tbdoctor.py ]]; then
  "$python" "$SCRIPT_DIR/tbdoctor.py" --brief --port "$port" -- "$logdir" >&2 2>/dev/null || true
fi

printf 'TensorBoard for %s: http://127.0.0.1:%s/ (Ctrl-C stops it)\n' "$logdir" "$port"
exec "$tensorboard" --logdir "$logdir" --host 127.0.0.1 --port "$port"
