#!/usr/bin/env bash
# tokens-per-watt remote installer. deploy/tpw-deploy.sh copies this script, the exporter and the
# service templates to a host over ssh and runs it there; it is not meant to be run by hand.
#
#   remote-install.sh install|uninstall|status|doctor
#
# Settings (environment, set by tpw-deploy.sh from the inventory):
#   TPW_KIND          mac | linux
#   TPW_MODE          mac: agent | daemon      linux: system | root (root reads RAPL)
#   TPW_ENDPOINT      collector base URL          TPW_CLUSTER / TPW_ENVIRONMENT   resource values
#   TPW_SSH_USER      the user a LaunchDaemon runs as (default: the ssh user)
#   DRY_RUN=1         print what would change, change nothing
#   TPW_ROOT          prefix for every absolute path (tests only; default empty)
#   TPW_PATH_PREPEND  directories put first on PATH (tests only: stand-ins for launchctl, ...)
#
# Re-runs are idempotent: files are replaced only when their sha256 differs, and the service is
# restarted only when something it uses changed (or it is not running).
# Written for bash 3.2 (macOS /bin/bash): no associative arrays, no ${x,,}.
set -euo pipefail

STAGE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${TPW_ROOT:-}"
DRY_RUN="${DRY_RUN:-0}"
LABEL="io.tokens-per-watt.macmon-exporter"
AGENT_LABEL="io.tokens-per-watt.otelcol-agent"
CHANGED_AGENT=0     # the Mac-local collector agent's binary, config or plist changed
UNIT="nvsmi-otel-exporter.service"
CHANGED_PROGRAM=0   # exporter, env file or binary changed: a restart picks it up
CHANGED_SERVICE=0   # plist or unit changed: the service definition must be reloaded
SERVICE_PYTHON=/usr/bin/python3  # what the unit and the plists run
if [ -n "${TPW_PATH_PREPEND:-}" ]; then PATH="$TPW_PATH_PREPEND:$PATH"; fi

say() { printf 'tpw[%s]: %s\n' "$(hostname -s 2>/dev/null || hostname)" "$*"; }
err() { printf 'tpw[%s]: error: %s\n' "$(hostname -s 2>/dev/null || hostname)" "$*" >&2; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || err "'$1' is needed on this host: $2"; }
run() { if [ "$DRY_RUN" = 1 ]; then say "would run: $*"; else "$@"; fi; }

sha256_of() {
  if [ ! -f "$1" ]; then echo none; return; fi
  if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
  else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

# Put SRC at DEST with MODE when the content differs. Sets the variable named by $4 to 1 on change.
install_file() {
  local src="$1" dest="$2" mode="$3" flag="$4"
  if [ "$(sha256_of "$src")" = "$(sha256_of "$dest")" ]; then
    run chmod "$mode" "$dest"
    return
  fi
  say "update $dest"
  printf -v "$flag" %s 1
  if [ "$DRY_RUN" = 1 ]; then return; fi
  mkdir -p "$(dirname "$dest")"
  cp "$src" "$dest.tpw-new"
  chmod "$mode" "$dest.tpw-new"
  mv -f "$dest.tpw-new" "$dest"
}

# ------------------------------------------------------------------ paths per kind and mode

plan_paths() {
  case "${TPW_KIND:-}:${TPW_MODE:-}" in
    mac:agent)
      HOME_DIR="$ROOT$HOME"
      APP_DIR="$HOME_DIR/Library/Application Support/tokens-per-watt"
      LOG_DIR="$HOME_DIR/Library/Logs/tokens-per-watt"
      SERVICE_FILE="$HOME_DIR/Library/LaunchAgents/$LABEL.plist"
      TEMPLATE="$STAGE/$LABEL.agent.plist"
      EXPORTER="macmon-otel-exporter.py" ;;
    mac:daemon)
      APP_DIR="$ROOT/usr/local/lib/tokens-per-watt"
      LOG_DIR="$ROOT/Library/Logs/tokens-per-watt"
      SERVICE_FILE="$ROOT/Library/LaunchDaemons/$LABEL.plist"
      TEMPLATE="$STAGE/$LABEL.daemon.plist"
      EXPORTER="macmon-otel-exporter.py" ;;
    linux:system|linux:root)
      APP_DIR="$ROOT/opt/tokens-per-watt"
      LOG_DIR=""
      SERVICE_FILE="$ROOT/etc/systemd/system/$UNIT"
      TEMPLATE="$STAGE/$UNIT"
      EXPORTER="nvsmi-otel-exporter.py" ;;
    *) err "unknown kind/mode '${TPW_KIND:-}:${TPW_MODE:-}': use mac:agent, mac:daemon, linux:system or linux:root" ;;
  esac
  if [ "$TPW_KIND" = mac ]; then
    ENV_FILE="$APP_DIR/exporter.env"
  else
    ENV_FILE="$ROOT/etc/tokens-per-watt/nvsmi-otel-exporter.env"
    DROPIN="$ROOT/etc/systemd/system/$UNIT.d/rapl-root.conf"
  fi
  # The service runs the exporter as a module (python3 -m), under a name Python can import.
  MODULE="$(printf %s "${EXPORTER%.py}" | tr - _)"
  UNINSTALL="$APP_DIR/uninstall.sh"
  AGENT_PLIST="$ROOT/Library/LaunchDaemons/$AGENT_LABEL.plist"
}

# ------------------------------------------------------------------ checks

check_python() {
  if [ "$TPW_KIND" = mac ]; then
    # /usr/bin/python3 without the Command Line Tools is a stub that pops up an installer and fails.
    if [ ! -e "$ROOT/Library/Developer/CommandLineTools/usr/bin/python3" ] && ! xcode-select -p >/dev/null 2>&1; then
      err "/usr/bin/python3 is only the installer stub here: install the Command Line Tools (xcode-select --install), then deploy again"
    fi
  else
    need_cmd python3 "install Python 3.9 or newer (apt-get install python3)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || err "python3 is older than 3.9; install a newer one"
  fi
}

# ------------------------------------------------------------------ files

render_service() {
  local out="$STAGE/service.rendered"
  sed -e "s|__PYTHON__|$SERVICE_PYTHON|g" \
      -e "s|__MODULE__|$MODULE|g" \
      -e "s|__ENV_FILE__|$ENV_FILE|g" \
      -e "s|__APP_DIR__|$APP_DIR|g" \
      -e "s|__LOG_DIR__|$LOG_DIR|g" \
      -e "s|__USER__|${TPW_SSH_USER:-$(id -un)}|g" "$TEMPLATE" > "$out"
  if [ "$TPW_KIND" = linux ]; then
    # the unit's absolute paths move under TPW_ROOT only in tests
    sed -i.bak -e "s|/opt/tokens-per-watt|$APP_DIR|g" -e "s|/etc/tokens-per-watt|$ROOT/etc/tokens-per-watt|g" "$out"
    rm -f "$out.bak"
  fi
  if command -v plutil >/dev/null 2>&1 && [ "$TPW_KIND" = mac ]; then
    plutil -lint "$out" >/dev/null || err "rendered plist does not parse: $out"
  fi
  echo "$out"
}

# The service imports the exporter as a module from bytecode compiled here instead of running it
# as a script: CPython keeps a script's whole parse tree in memory for as long as the script runs
# (about 7 MB of the NVIDIA exporter's 21 MB), and drops a module's once it is compiled. The cache
# is checked-hash: it holds the source's hash, so a stale cache is never used, and after a Python
# upgrade (another cache tag) the exporter is compiled in memory at start until the next deploy.
install_bytecode() {
  local link="$APP_DIR/$MODULE.py"
  if [ "$(readlink "$link" 2>/dev/null || true)" != "$EXPORTER" ]; then
    say "link $link -> $EXPORTER"
    run ln -sfn "$EXPORTER" "$link"
  fi
  [ -x "$SERVICE_PYTHON" ] || err "the service runs $SERVICE_PYTHON, which is not on this host; install Python 3.9+ there"
  run "$SERVICE_PYTHON" -m compileall -q --invalidation-mode checked-hash "$link" \
    || err "$SERVICE_PYTHON could not compile $link; run it by hand to see why: $SERVICE_PYTHON $APP_DIR/$EXPORTER --help"
}

# The env file holds settings the inventory manages plus anything the user added (tokens).
# Managed keys are rewritten in place; every other line is kept as it is.
render_env_file() {
  local out="$STAGE/env.rendered"
  if [ -f "$ENV_FILE" ]; then
    grep -v -E '^(OTEL_EXPORTER_OTLP_ENDPOINT|TPW_CLUSTER|TPW_ENVIRONMENT)=' "$ENV_FILE" > "$out" || true
  else
    cat > "$out" <<'EOT'
# tokens-per-watt exporter settings (mode 0600). Lines above the managed block are yours:
# put tokens here, e.g. OTEL_EXPORTER_OTLP_HEADERS=signoz-ingestion-key=...
# The three managed keys below are rewritten by `make deploy` from deploy/hosts.
EOT
  fi
  {
    echo "OTEL_EXPORTER_OTLP_ENDPOINT=$TPW_ENDPOINT"
    echo "TPW_CLUSTER=$TPW_CLUSTER"
    if [ -n "${TPW_ENVIRONMENT:-}" ] && [ "$TPW_ENVIRONMENT" != - ]; then echo "TPW_ENVIRONMENT=$TPW_ENVIRONMENT"; fi
  } >> "$out"
  echo "$out"
}

write_uninstall() {
  local out="$STAGE/uninstall.rendered"
  {
    echo '#!/usr/bin/env bash'
    echo '# Generated by tokens-per-watt deploy: removes exactly what it installed on this host.'
    echo 'set -uo pipefail'
    if [ -n "${TPW_PATH_PREPEND:-}" ]; then echo "PATH=\"$TPW_PATH_PREPEND:\$PATH\""; fi
    if [ "$TPW_KIND" = mac ]; then
      echo "launchctl bootout \"$(launchd_domain)/$LABEL\" 2>/dev/null || true"
      echo "rm -f \"$SERVICE_FILE\""
      if [ -f "$STAGE/otelcol-contrib" ]; then
        echo "launchctl bootout \"system/$AGENT_LABEL\" 2>/dev/null || true"
        echo "rm -f \"$AGENT_PLIST\""
      fi
      echo "rm -rf \"$LOG_DIR\""
    else
      echo "systemctl disable --now $UNIT 2>/dev/null || true"
      echo "rm -f \"$SERVICE_FILE\" \"$DROPIN\""
      echo "rmdir \"$(dirname "$DROPIN")\" 2>/dev/null || true"
      echo "rm -f \"$ENV_FILE\""
      echo "rmdir \"$(dirname "$ENV_FILE")\" 2>/dev/null || true"
      echo "systemctl daemon-reload"
      echo "systemctl reset-failed $UNIT 2>/dev/null || true"
    fi
    echo "rm -rf \"$APP_DIR\""
    echo "echo \"tokens-per-watt: removed\""
  } > "$out"
  echo "$out"
}

# Conditional ad-hoc signing (macOS): replace the collector binary only when its sha256 changed,
# and sign only when `codesign --verify --strict` fails. Re-signing a binary that verifies would
# change its cdhash and lose its Local Network grant.
install_signed_binary() {
  local src="$1" dest="$2" flag="$3" marker="$2.source-sha256"
  local want
  want="$(sha256_of "$src")"
  if [ ! -f "$dest" ] || [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
    # Compare with the source hash recorded at install: signing rewrites the installed file.
    say "update $dest"
    printf -v "$flag" %s 1
    if [ "$DRY_RUN" != 1 ]; then
      mkdir -p "$(dirname "$dest")"
      cp "$src" "$dest.tpw-new" && chmod 0755 "$dest.tpw-new" && mv -f "$dest.tpw-new" "$dest"
      echo "$want" > "$marker"
    fi
  fi
  if [ "$DRY_RUN" = 1 ] && [ ! -f "$dest" ]; then return; fi
  if codesign --verify --strict "$dest" >/dev/null 2>&1; then
    say "signature of $dest verifies: not re-signing"
  else
    say "signing $dest (ad hoc)"
    run codesign --force --sign - "$dest"
  fi
}

# The Mac-local collector agent: a LaunchDaemon, so macOS Local Network privacy never applies.
install_agent() {
  local rendered="$STAGE/agent.rendered"
  [ -n "${TPW_GATEWAY:-}" ] || err "the Mac-local agent needs TPW_GATEWAY (the gateway URL)"
  install_signed_binary "$STAGE/otelcol-contrib" "$APP_DIR/otelcol-contrib" CHANGED_AGENT
  install_file "$STAGE/agent-mac.yaml" "$APP_DIR/otelcol-agent.yaml" 0644 CHANGED_AGENT
  # The agent's sending queue on disk (file_storage/queue); the daemon runs as this same user.
  run mkdir -p "$APP_DIR/otelcol-queue"
  sed -e "s|__BINARY__|$APP_DIR/otelcol-contrib|g" -e "s|__CONFIG__|$APP_DIR/otelcol-agent.yaml|g" \
      -e "s|__GATEWAY__|$TPW_GATEWAY|g" -e "s|__APP_DIR__|$APP_DIR|g" -e "s|__LOG_DIR__|$LOG_DIR|g" \
      -e "s|__USER__|${TPW_SSH_USER:-$(id -un)}|g" "$STAGE/$AGENT_LABEL.plist" > "$rendered"
  local plist_changed=0
  install_file "$rendered" "$AGENT_PLIST" 0644 plist_changed
  if [ "$plist_changed" = 1 ] || ! launchctl print "system/$AGENT_LABEL" >/dev/null 2>&1; then
    launchd_reload system "$AGENT_LABEL" "$AGENT_PLIST"
  elif [ "$CHANGED_AGENT" = 1 ]; then
    say "launchctl: restart $AGENT_LABEL"
    run launchctl kickstart -k "system/$AGENT_LABEL"
  fi
}

# ------------------------------------------------------------------ services

launchd_domain() {
  if [ "$TPW_MODE" = daemon ]; then echo system; return; fi
  # Over ssh there is usually no GUI session for this user: gui/UID only when it exists.
  if launchctl print "gui/$(id -u)" >/dev/null 2>&1; then echo "gui/$(id -u)"; else echo "user/$(id -u)"; fi
}

launchd_running() {
  launchctl print "$(launchd_domain)/$LABEL" 2>/dev/null | grep -q 'state = running'
}

# launchd_reload DOMAIN LABEL PLIST: the bootout / wait / enable / bootstrap dance.
launchd_reload() {
  local domain="$1" label="$2" plist="$3" waited=0
  say "launchctl: reload $label in $domain"
  run launchctl bootout "$domain/$label" 2>/dev/null || true
  if [ "$DRY_RUN" != 1 ]; then
    # bootout returns before the job is gone; bootstrap fails with EIO while it drains.
    while launchctl print "$domain/$label" >/dev/null 2>&1; do
      [ "$waited" -ge 100 ] && err "$label did not unload within 10 s; try: launchctl bootout $domain/$label"
      sleep 0.1; waited=$((waited + 1))
    done
  fi
  run launchctl enable "$domain/$label"
  if ! run launchctl bootstrap "$domain" "$plist"; then
    sleep 1
    run launchctl bootstrap "$domain" "$plist" || err "launchctl bootstrap failed; see: launchctl print $domain/$label"
  fi
}

service_apply() {
  if [ "$TPW_KIND" = mac ]; then
    if [ "$CHANGED_SERVICE" = 1 ] || ! launchctl print "$(launchd_domain)/$LABEL" >/dev/null 2>&1; then
      launchd_reload "$(launchd_domain)" "$LABEL" "$SERVICE_FILE"
    elif [ "$CHANGED_PROGRAM" = 1 ] || ! launchd_running; then
      say "launchctl: restart $LABEL"
      run launchctl kickstart -k "$(launchd_domain)/$LABEL"
    else
      say "no change: nothing restarted"
    fi
  else
    if [ "$CHANGED_SERVICE" = 1 ]; then run systemctl daemon-reload; fi
    if ! systemctl is-enabled --quiet "$UNIT" 2>/dev/null; then run systemctl enable "$UNIT"; fi
    if [ "$CHANGED_SERVICE" = 1 ] || [ "$CHANGED_PROGRAM" = 1 ]; then
      say "systemctl: restart $UNIT"
      run systemctl restart "$UNIT"
    elif ! systemctl is-active --quiet "$UNIT"; then
      run systemctl start "$UNIT"
    else
      say "no change: nothing restarted"
    fi
  fi
}

# ------------------------------------------------------------------ actions

do_install() {
  check_python
  say "installing the $TPW_KIND exporter ($TPW_MODE) into $APP_DIR"
  if [ "$DRY_RUN" != 1 ]; then
    mkdir -p "$APP_DIR"
    [ -z "$LOG_DIR" ] || mkdir -p "$LOG_DIR"
    mkdir -p "$(dirname "$ENV_FILE")"
  fi
  install_file "$STAGE/$EXPORTER" "$APP_DIR/$EXPORTER" 0755 CHANGED_PROGRAM
  install_bytecode
  install_file "$(render_env_file)" "$ENV_FILE" 0600 CHANGED_PROGRAM
  install_file "$(render_service)" "$SERVICE_FILE" 0644 CHANGED_SERVICE
  if [ "$TPW_KIND" = linux ]; then
    if [ "$TPW_MODE" = root ]; then
      install_file "$STAGE/rapl-root.conf" "$DROPIN" 0644 CHANGED_SERVICE
    elif [ -f "$DROPIN" ]; then
      say "remove $DROPIN"; CHANGED_SERVICE=1; run rm -f "$DROPIN"
    fi
  fi
  if [ -f "$STAGE/otelcol-contrib" ]; then install_agent; fi
  local uninstall_changed=0  # the uninstall script changing is no reason to restart
  install_file "$(write_uninstall)" "$UNINSTALL" 0755 uninstall_changed
  : "$uninstall_changed"
  service_apply
  say "done; status: make status HOST=...  diagnose: make doctor HOST=..."
}

do_uninstall() {
  if [ ! -f "$UNINSTALL" ]; then say "nothing installed here ($UNINSTALL not found)"; return; fi
  if [ "$DRY_RUN" = 1 ]; then say "would run $UNINSTALL:"; cat "$UNINSTALL"; return; fi
  bash "$UNINSTALL"
}

# The exporter's own success lines, and only those: the first accepted export, the hourly delivery
# note and the end of an outage. Anchored at the line's start, so neither the stop summary
# ("stopped: ... delivered N") nor "N samples were not delivered" nor text quoted inside a warning
# can pass for a send.
SUCCESS_LINE='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z INFO (first export accepted by |delivered [0-9]+ samples in the last |collector is back after )'

do_status() {
  local log
  if [ "$TPW_KIND" = mac ]; then
    say "launchd $(launchd_domain)/$LABEL:"
    launchctl print "$(launchd_domain)/$LABEL" 2>/dev/null | grep -E 'state =|pid =|last exit code =|runs =' || say "  not loaded"
    log="$LOG_DIR/macmon-exporter.log"
  else
    systemctl status --no-pager --lines=0 "$UNIT" 2>/dev/null | sed -n '1,5p' || true
    log=""
  fi
  if [ -n "$log" ] && [ -f "$log" ]; then
    say "last successful send: $(grep -E "$SUCCESS_LINE" "$log" | tail -n 1 || true)"
    say "last error: $(grep -E ' (WARNING|ERROR) ' "$log" | tail -n 1 || true)"
  elif command -v journalctl >/dev/null 2>&1 && [ "$TPW_KIND" = linux ]; then
    say "last successful send: $(journalctl -u "$UNIT" --no-pager -o cat 2>/dev/null | grep -E "$SUCCESS_LINE" | tail -n 1 || true)"
    say "last error: $(journalctl -u "$UNIT" --no-pager -o cat 2>/dev/null | grep -E ' (WARNING|ERROR) ' | tail -n 1 || true)"
  fi
}

do_doctor() {
  [ -f "$APP_DIR/$EXPORTER" ] || err "the exporter is not installed here; run: make deploy HOST=..."
  local out rc=0
  out="$(python3 "$APP_DIR/$EXPORTER" --check --env-file "$ENV_FILE" 2>&1)" || rc=$?
  printf '%s\n' "$out"
  if [ "$rc" = 0 ]; then say "doctor: the exporter can read its source and the collector accepts its data"; return; fi
  case "$out" in
    *"Local Network privacy"*) say "doctor: macOS blocks this LaunchAgent from the LAN: deploy with mode daemon, or send to a collector on 127.0.0.1" ;;
    *"not found"*) say "doctor: the power source is missing on this host (install macmon / the NVIDIA driver)" ;;
    *"TCP connect"*) say "doctor: the collector at $TPW_ENDPOINT is not reachable from this host: is it running, is the port open?" ;;
    *"collector accepted a POST"*) say "doctor: the collector answered but refused the data: check its logs and any auth headers in $ENV_FILE" ;;
    *) say "doctor: see the FAIL lines above" ;;
  esac
  return "$rc"
}

main() {
  local action="${1:-}"
  [ -n "$action" ] || err "usage: remote-install.sh install|uninstall|status|doctor"
  plan_paths
  if [ "$TPW_KIND" = mac ] && [ "$action" != uninstall ]; then
    need_cmd launchctl "this does not look like macOS (kind 'mac' in deploy/hosts?)"
  fi
  if [ "$TPW_KIND" = linux ] && [ "$action" != uninstall ]; then
    need_cmd systemctl "this host has no systemd; run the exporter by hand (see docs/deploy.md)"
  fi
  case "$action" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    status) do_status ;;
    doctor) do_doctor ;;
    *) err "unknown action '$action': use install, uninstall, status or doctor" ;;
  esac
}

main "$@"
