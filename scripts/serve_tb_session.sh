# serve_tb_session.sh: one ssh session of serve_tb.sh (connect, watch, tear down). Sourced by serve_tb.sh,
# never run; it uses serve_tb.sh's settings (host, tmp, tag, ssh_common, ports, heartbeat, mode).
# Laptop side: bash 3.2 and BSD tools too (tools/check_portability.py).
# shellcheck shell=bash disable=SC2154,SC2034  # settings come from serve_tb.sh, results go back to it

ssh_pid="" writer_pid="" sleep_pid="" fds_open=0

# take_ssh_error: the session's ssh has ended; reap it and make its error the failure (fail_msg, fail_fatal).
take_ssh_error() {
  wait "$ssh_pid" 2>/dev/null || true
  ssh_pid=""
  explain_ssh_error "$host" "$tmp/ssh.err"
  fail_msg=$ssh_error fail_fatal=$ssh_error_fatal
}

# connect first|again: one ssh session that starts the remote side, then the forward, then a check
# through the tunnel. Sets remote_port, remote_pid, remote_logdir; on failure, fail_msg and fail_fatal
# (1: retrying cannot help) and returns 1 with nothing left running. "first" shows the remote side's
# messages and may move to the next local port; "again" keeps the local port (the URL stays the same).
connect() {
  local when=$1 line ready="" remote_error="" done=0 i
  fail_msg="" fail_fatal=1 ssh_error_details=""
  rm -f -- "$tmp/in" "$tmp/out"
  mkfifo "$tmp/in" "$tmp/out"
  # A background job of a script ignores SIGINT, so Ctrl-C reaches only this script, which then stops
  # the remote side in order. -T: no pty (the remote side relies on its stdin, not on SIGHUP).
  ssh -o ControlMaster=yes -o ControlPersist=no "${ssh_common[@]}" -T "$host" "$BOOTSTRAP" \
    <"$tmp/in" >"$tmp/out" 2>"$tmp/ssh.err" &
  ssh_pid=$!
  exec 3>"$tmp/in" 4<"$tmp/out"
  fds_open=1
  cat "$tmp/payload" >&3 &
  writer_pid=$!

  while IFS= read -r line <&4; do
    case $line in
      "$tag ready "*) ready=${line#"$tag ready "}; break ;;
      "$tag done") done=1; break ;;
      # Everything the server sends is shown through shown_line (common.sh): no raw control characters.
      "$tag error "*)
        remote_error=$(shown_line "${line#"$tag error "}")
        [[ $when == again ]] || printf '%s: error: %s\n' "$PROG" "$remote_error" >&2
        ;;
      "$tag row "*) shown_line "${line#"$tag row "}" ;;
      "$tag dir "*) served_dir_hex=${line#"$tag dir "} ;;
      "$tag info "*) [[ $when == again ]] || note "$(shown_line "${line#"$tag info "}")" ;;
      "$tag "*) ;;
      *) [[ $when == again ]] || shown_line "$line" >&2 ;;
    esac
  done
  if ((done == 1)); then
    return 0
  elif [[ -z $ready ]]; then
    if [[ -n $remote_error ]]; then
      fail_msg=$remote_error fail_fatal=0
      # Already printed (first): exit without repeating it.
      [[ $when == again ]] || { teardown; exit 1; }
    else
      take_ssh_error
    fi
    teardown
    return 1
  fi
  read -r remote_port remote_pid remote_logdir <<<"$(shown_line "$ready")"

  # The forward, added to the open connection.
  while ! ssh "${ssh_common[@]}" -O forward -L "127.0.0.1:$local_port:127.0.0.1:$remote_port" "$host" \
    >/dev/null 2>"$tmp/forward.err"; do
    if [[ $when == again ]] || ((local_port_fixed == 1 || local_port >= DEFAULT_LOCAL_PORT + PORT_TRIES)); then
      fail_msg="cannot bind local port 127.0.0.1:$local_port: $(grep -i -e bind -e listen "$tmp/ssh.err" | tail -n 1 || true)$(tail -n 1 "$tmp/forward.err")"
      fail_fatal=0
      teardown
      return 1
    fi
    local_port=$((local_port + 1))
  done

  for ((i = 0; i < 150; i++)); do
    tensorboard_answers "$local_port" && return 0
    if ! kill -0 "$ssh_pid" 2>/dev/null; then
      take_ssh_error
      teardown
      return 1
    fi
    sleep 0.2
  done
  fail_msg="TensorBoard on $host does not answer through the tunnel" fail_fatal=0
  teardown
  return 1
}

# watch_session: returns when the connection is lost, with the reason in `lost`. The server writes a line
# at least every $heartbeat seconds; each line it writes wakes this loop, which then sends our heartbeat
# when one is due. The read waits for a line, not for the next heartbeat: a `read -t` that times out in
# the middle of a line returns the part it read (bash 4+; bash 3.2 drops it) and the rest would come as a
# line of its own, without the marker, and reach the user's terminal ("@serve_tb NONCE alive"). Here a read
# times out only after $dead_after silent seconds, when the connection is dead anyway; what a timeout
# leaves is still joined to the rest of its line.
watch_session() {
  local line partial="" heard=$SECONDS sent=$SECONDS
  lost=""
  while :; do
    line=""
    # bash 3.2's read -t returns 1 both at EOF and on a timeout: EOF is when ssh has exited.
    if IFS= read -r -t "$dead_after" line <&4; then
      heard=$SECONDS
      line=$partial$line partial=""
      case $line in
        *"$tag error "*) lost="the server said: $(shown_line "${line#*"$tag error "}")" ;;
        *"$tag "*) ;;
        *) shown_line "$line" >&2 ;;
      esac
    else
      partial+=$line
      if ! kill -0 "$ssh_pid" 2>/dev/null; then
        lost="the connection closed: $(grep -v '^ *$' "$tmp/ssh.err" | tail -n 1 || true)"
        lost=${lost%: }
        return
      fi
      ((SECONDS - heard >= dead_after)) || sleep 0.1 # at EOF, until ssh is gone: no busy loop
    fi
    if ((SECONDS - sent >= heartbeat)); then
      if ! printf 'alive\n' >&3 2>/dev/null; then
        lost="the connection closed"
        return
      fi
      sent=$SECONDS
    fi
    if ((SECONDS - heard >= dead_after)); then
      lost="no heartbeat from the server for $((SECONDS - heard)) s"
      return
    fi
  done
}

# pause SECONDS: a sleep that a signal interrupts at once (a foreground sleep would delay the trap).
pause() {
  sleep "$1" &
  sleep_pid=$!
  wait "$sleep_pid" 2>/dev/null || true
  sleep_pid=""
}

# teardown: the session's ssh and pipes gone, at once (the server side stops on its own: its stdin
# closes when the connection goes, and its heartbeat runs out when the network is cut).
teardown() {
  local i
  if ((fds_open == 1)); then
    exec 3>&- 4<&-
    fds_open=0
  fi
  if [[ -n $writer_pid ]]; then
    kill "$writer_pid" 2>/dev/null || true
    wait "$writer_pid" 2>/dev/null || true
    writer_pid=""
  fi
  if [[ -n $ssh_pid ]]; then
    kill "$ssh_pid" 2>/dev/null || true
    for ((i = 0; i < 10; i++)); do kill -0 "$ssh_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$ssh_pid" 2>/dev/null || true
    wait "$ssh_pid" 2>/dev/null || true
    ssh_pid=""
  fi
  rm -f -- "$tmp/in" "$tmp/out"
}

# stop_remote: closes the remote side's stdin, which makes it stop TensorBoard, and waits (at most 4 s)
# for its word, then tears the session down.
stop_remote() {
  local line partial="" start=$SECONDS
  if ((fds_open == 1)) && [[ -n $ssh_pid ]]; then
    exec 3>&-
    while ((SECONDS - start < 4)) && kill -0 "$ssh_pid" 2>/dev/null; do
      line=""
      # (a 1 s timeout may cut a line: its start is kept and joined to the rest, see watch_session)
      IFS= read -r -t 1 line <&4 || { partial+=$line; continue; }
      line=$partial$line partial=""
      case $line in
        *"$tag stopped") note "stopped the remote TensorBoard"; break ;;
        *"$tag "*) ;; # (a signal may have cut a line short: the nonce still marks it)
        *) shown_line "$line" >&2 ;;
      esac
    done
  fi
  teardown
}

# The EXIT trap: whatever happened (Ctrl-C, SIGTERM, SIGHUP, an error), nothing is left behind.
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
  set +e
  trap '' INT TERM HUP
  [[ -z $sleep_pid ]] || kill "$sleep_pid" 2>/dev/null
  stop_remote
  [[ -z ${tmp:-} ]] || rm -rf -- "$tmp"
}
