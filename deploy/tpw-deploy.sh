#!/usr/bin/env bash
# tokens-per-watt deploy: install, remove and inspect the exporters on the hosts of an inventory.
#
#   deploy/tpw-deploy.sh deploy|undeploy|status|doctor|collector|verify HOST
#   (usually through make: make deploy HOST=mac-studio, make collector HOST=ai-stack)
#
# Environment:
#   HOSTS_FILE      inventory (default deploy/hosts; see deploy/hosts.example)
#   DRY_RUN=1       print what would be done on the host, change nothing
#   SSH             ssh command (default ssh)
#   SSH_OPTS        extra ssh options, e.g. "-p 2222 -i ~/.ssh/lab"
#   OTELCOL_BINARY  a local otelcol-contrib binary to run on a Mac as the Mac-local agent
#                   (otelcol/agent-mac.yaml, a LaunchDaemon); it is replaced only when its sha256
#                   changed, and ad-hoc signed only when `codesign --verify --strict` fails
#   TPW_GATEWAY     with OTELCOL_BINARY: the gateway the agent forwards to
#   TPW_HEALTH_URL, TPW_METRICS_URL, TPW_HEALTH_WAIT, TPW_REQUIRE_TRAFFIC, TPW_TRAFFIC_WAIT
#                   passed to the collector rollout (see deploy/collector-rollout.sh)
#   VERIFY_ENV_FILE mode-0600 file with the backend API settings for verify (otelcol/verify.env.example)
#   TPW_REMOTE_ROOT, TPW_REMOTE_PATH   prefix for remote paths / extra remote PATH (tests only)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
TOP="$(cd "$HERE/.." && pwd)"
HOSTS_FILE="${HOSTS_FILE:-$HERE/hosts}"
SSH="${SSH:-ssh}"
SSH_OPTS="${SSH_OPTS:-}"
DRY_RUN="${DRY_RUN:-0}"

say() { printf 'tpw: %s\n' "$*"; }
err() { printf 'tpw: error: %s\n' "$*" >&2; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || err "'$1' is needed: $2"; }

usage() {
  cat <<EOT
usage: deploy/tpw-deploy.sh deploy|undeploy|status|doctor|collector|verify HOST

  deploy    copy the exporter and its service definition to HOST and (re)start it when something changed
  undeploy  remove everything deploy installed on HOST
  status    is the exporter running, its last successful send, its last error
  doctor    run the exporter's --check on HOST and explain the result
  collector roll the gateway config out to a collector HOST: validate, swap, restart, check, roll back
  verify    is data arriving? the collector's own counters, then each backend's API

Hosts come from $HOSTS_FILE (see deploy/hosts.example). DRY_RUN=1 prints and changes nothing.
EOT
}

# Fill HOST_* from the inventory line whose first field is $1.
read_inventory() {
  local want="$1" name kind target endpoint cluster environment mode extra
  [ -f "$HOSTS_FILE" ] || err "no inventory at $HOSTS_FILE: copy deploy/hosts.example to deploy/hosts and edit it"
  while read -r name kind target endpoint cluster environment mode extra; do
    case "$name" in ''|'#'*) continue ;; esac
    [ "$name" = "$want" ] || continue
    [ -n "$mode" ] && [ -z "${extra:-}" ] || err "$HOSTS_FILE: line for '$want' needs exactly 7 fields (name kind ssh endpoint cluster environment mode)"
    HOST_KIND="$kind" HOST_TARGET="$target" HOST_ENDPOINT="$endpoint"
    HOST_CLUSTER="$cluster" HOST_ENVIRONMENT="$environment" HOST_MODE="$mode"
    validate_host
    return
  done < "$HOSTS_FILE"
  err "no host '$want' in $HOSTS_FILE; known: $(awk '!/^[[:space:]]*(#|$)/ {printf "%s ", $1}' "$HOSTS_FILE")"
}

validate_host() {
  case "$HOST_KIND:$HOST_MODE" in
    mac:agent|mac:daemon|linux:system|linux:root) ;;
    collector:all) ;;
    collector:*[!a-z0-9+]*|collector:) err "host '$HOST_NAME': the backends '$HOST_MODE' are not a '+'-joined list of signoz, splunk, o11y, prometheus" ;;
    collector:*) ;;  # the rollout checks each name
    *) err "host kind/mode '$HOST_KIND $HOST_MODE': use 'mac agent', 'mac daemon', 'linux system', 'linux root' or 'collector BACKENDS' (signoz, splunk, o11y, prometheus joined by '+', or all)" ;;
  esac
  case "$HOST_ENDPOINT" in
    http://*|https://*) ;;
    *) err "endpoint '$HOST_ENDPOINT' is not an http:// or https:// URL" ;;
  esac
  local value safe='^[][A-Za-z0-9._:/@%+=,-]+$'
  for value in "$HOST_TARGET" "$HOST_ENDPOINT" "$HOST_CLUSTER" "$HOST_ENVIRONMENT"; do
    # These travel in a remote command line: keep them to characters that need no quoting.
    [[ "$value" =~ $safe ]] || err "'$value' in $HOSTS_FILE has characters that are not allowed there"
  done
}

ssh_host() {
  # shellcheck disable=SC2086  # SSH_OPTS is a list of options on purpose
  "$SSH" $SSH_OPTS -o BatchMode=yes "$HOST_TARGET" "$@"
}

# Copy the files this host needs into a fresh folder on it; prints that folder.
# (Runs in a command substitution, where set -e does not reach on bash 3.2: every step checks.)
stage_files() {
  local local_stage remote_stage
  local_stage="$(mktemp -d)" || err "mktemp failed"
  trap 'rm -rf "$local_stage"' RETURN
  local files=("$HERE/remote-install.sh")
  case "$HOST_KIND" in
    collector)
      files=("$HERE/collector-rollout.sh" "$TOP/otelcol") ;;
    mac)
      files+=("$TOP/exporters/macmon-otel-exporter.py" "$TOP/plists/io.tokens-per-watt.macmon-exporter.agent.plist"
              "$TOP/plists/io.tokens-per-watt.macmon-exporter.daemon.plist")
      if [ -n "${OTELCOL_BINARY:-}" ]; then
        [ -f "$OTELCOL_BINARY" ] || err "OTELCOL_BINARY=$OTELCOL_BINARY is not a file"
        [ -n "${TPW_GATEWAY:-}" ] || err "OTELCOL_BINARY needs TPW_GATEWAY, the gateway the Mac-local agent forwards to (http://ai-stack:4318)"
        cp "$OTELCOL_BINARY" "$local_stage/otelcol-contrib" || err "cannot read $OTELCOL_BINARY"
        files+=("$TOP/otelcol/agent-mac.yaml" "$TOP/plists/io.tokens-per-watt.otelcol-agent.plist")
      fi ;;
    linux)
      files+=("$TOP/exporters/nvsmi-otel-exporter.py" "$TOP/units/nvsmi-otel-exporter.service"
              "$TOP/units/nvsmi-otel-exporter.service.d/rapl-root.conf") ;;
  esac
  cp -R "${files[@]}" "$local_stage/" || err "cannot stage ${files[*]}; run this from a full checkout"
  # shellcheck disable=SC2016  # $TMPDIR is the remote host's
  remote_stage="$(ssh_host 'mktemp -d "${TMPDIR:-/tmp}/tpw-stage.XXXXXX"')" || err "cannot reach $HOST_TARGET over ssh; check: $SSH $SSH_OPTS $HOST_TARGET true"
  tar -C "$local_stage" -cf - . | ssh_host "tar -C '$remote_stage' -xf -" || err "copying files to $HOST_TARGET failed"
  echo "$remote_stage"
}

run_collector_rollout() {
  local stage="$1" passthrough="" name
  for name in TPW_HEALTH_URL TPW_METRICS_URL TPW_HEALTH_WAIT TPW_REQUIRE_TRAFFIC TPW_TRAFFIC_WAIT; do
    if [ -n "${!name:-}" ]; then passthrough="$passthrough $name=${!name}"; fi
  done
  ssh_host "env TPW_BACKENDS=$HOST_MODE DRY_RUN=$DRY_RUN TPW_ROOT=${TPW_REMOTE_ROOT:-} TPW_PATH_PREPEND=${TPW_REMOTE_PATH:-}$passthrough" \
    "bash '$stage/collector-rollout.sh' apply; rc=\$?; rm -rf '$stage'; exit \$rc"
}

run_verify() {
  local page rc=0
  page="$(mktemp)"
  # The collector's own metrics listen on the gateway's loopback only: read them over ssh.
  # shellcheck disable=SC2016  # expanded on the remote host
  ssh_host 'curl -fsS --max-time 5 "${1:-http://127.0.0.1:8888/metrics}" 2>/dev/null || python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "${1:-http://127.0.0.1:8888/metrics}"' \
    -- "${TPW_METRICS_URL:-http://127.0.0.1:8888/metrics}" > "$page" || say "could not read the collector's metrics on $HOST_TARGET"
  python3 "$HERE/tpw-verify.py" --metrics-file "$page" || rc=$?
  rm -f "$page"
  return "$rc"
}

run_remote() {
  local action="$1" stage="$2" rc=0
  ssh_host "env TPW_KIND=$HOST_KIND TPW_MODE=$HOST_MODE TPW_ENDPOINT=$HOST_ENDPOINT TPW_CLUSTER=$HOST_CLUSTER" \
    "TPW_ENVIRONMENT=$HOST_ENVIRONMENT DRY_RUN=$DRY_RUN TPW_ROOT=${TPW_REMOTE_ROOT:-} TPW_PATH_PREPEND=${TPW_REMOTE_PATH:-}" \
    "TPW_GATEWAY=${TPW_GATEWAY:-}" \
    "bash '$stage/remote-install.sh' $action; rc=\$?; rm -rf '$stage'; exit \$rc" || rc=$?
  return "$rc"
}

main() {
  local action="${1:-}" host="${2:-}"
  case "$action" in
    -h|--help|help|'') usage; [ -n "$action" ]; return ;;
    deploy|undeploy|status|doctor|collector|verify) ;;
    *) usage >&2; err "unknown action '$action'" ;;
  esac
  [ -n "$host" ] || err "which host? e.g. make $action HOST=mac-studio (hosts are in $HOSTS_FILE)"
  need_cmd "$SSH" "install an OpenSSH client"
  need_cmd tar "install tar"
  read_inventory "$host"
  case "$action:$HOST_KIND" in
    collector:collector|verify:collector) ;;
    collector:*|verify:*) err "$host is a '$HOST_KIND' host; $action works on a host of kind 'collector' in $HOSTS_FILE" ;;
    *:collector) err "$host is a collector; use make collector HOST=$host or make verify HOST=$host" ;;
  esac
  if [ "$action" = verify ]; then run_verify; return; fi
  local remote_action
  case "$action" in
    deploy) remote_action=install ;;
    undeploy) remote_action=uninstall ;;
    *) remote_action="$action" ;;
  esac
  say "$action $host ($HOST_KIND, $HOST_MODE) at $HOST_TARGET, sending to $HOST_ENDPOINT$([ "$DRY_RUN" = 1 ] && echo ' [dry run]')"
  local stage
  stage="$(stage_files)" || exit 1
  if [ "$action" = collector ]; then run_collector_rollout "$stage"; return; fi
  run_remote "$remote_action" "$stage"
}

main "$@"
