#!/usr/bin/env bash
# tokens-per-watt deploy: install, remove and inspect the exporters on the hosts of an inventory.
#
#   deploy/tpw-deploy.sh deploy|undeploy|status|doctor HOST
#   (usually through make: make deploy HOST=mac-studio)
#
# Environment:
#   HOSTS_FILE      inventory (default deploy/hosts; see deploy/hosts.example)
#   DRY_RUN=1       print what would be done on the host, change nothing
#   SSH             ssh command (default ssh)
#   SSH_OPTS        extra ssh options, e.g. "-p 2222 -i ~/.ssh/lab"
#   OTELCOL_BINARY  a local otelcol-contrib binary to install next to a Mac's exporter; it is
#                   replaced only when its sha256 changed, and ad-hoc signed only when
#                   `codesign --verify --strict` fails
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
usage: deploy/tpw-deploy.sh deploy|undeploy|status|doctor HOST

  deploy    copy the exporter and its service definition to HOST and (re)start it when something changed
  undeploy  remove everything deploy installed on HOST
  status    is the exporter running, its last successful send, its last error
  doctor    run the exporter's --check on HOST and explain the result

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
    *) err "host kind/mode '$HOST_KIND $HOST_MODE': use 'mac agent', 'mac daemon', 'linux system' or 'linux root'" ;;
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
stage_files() {
  local local_stage remote_stage exporter
  local_stage="$(mktemp -d)"
  trap 'rm -rf "$local_stage"' RETURN
  if [ "$HOST_KIND" = mac ]; then
    exporter="$TOP/exporters/macmon-otel-exporter.py"
    cp "$TOP/plists/io.tokens-per-watt.macmon-exporter.agent.plist" "$TOP/plists/io.tokens-per-watt.macmon-exporter.daemon.plist" "$local_stage/"
    if [ -n "${OTELCOL_BINARY:-}" ]; then
      [ -f "$OTELCOL_BINARY" ] || err "OTELCOL_BINARY=$OTELCOL_BINARY is not a file"
      cp "$OTELCOL_BINARY" "$local_stage/otelcol-contrib"
    fi
  else
    exporter="$TOP/exporters/nvsmi-otel-exporter.py"
    cp "$TOP/units/nvsmi-otel-exporter.service" "$TOP/units/nvsmi-otel-exporter.service.d/rapl-root.conf" "$local_stage/"
  fi
  cp "$exporter" "$HERE/remote-install.sh" "$local_stage/"
  # shellcheck disable=SC2016  # $TMPDIR is the remote host's
  remote_stage="$(ssh_host 'mktemp -d "${TMPDIR:-/tmp}/tpw-stage.XXXXXX"')" || err "cannot reach $HOST_TARGET over ssh; check: $SSH $SSH_OPTS $HOST_TARGET true"
  tar -C "$local_stage" -cf - . | ssh_host "tar -C '$remote_stage' -xf -" || err "copying files to $HOST_TARGET failed"
  echo "$remote_stage"
}

run_remote() {
  local action="$1" stage="$2" rc=0
  ssh_host "env TPW_KIND=$HOST_KIND TPW_MODE=$HOST_MODE TPW_ENDPOINT=$HOST_ENDPOINT TPW_CLUSTER=$HOST_CLUSTER" \
    "TPW_ENVIRONMENT=$HOST_ENVIRONMENT DRY_RUN=$DRY_RUN TPW_ROOT=${TPW_REMOTE_ROOT:-} TPW_PATH_PREPEND=${TPW_REMOTE_PATH:-}" \
    "bash '$stage/remote-install.sh' $action; rc=\$?; rm -rf '$stage'; exit \$rc" || rc=$?
  return "$rc"
}

main() {
  local action="${1:-}" host="${2:-}"
  case "$action" in
    -h|--help|help|'') usage; [ -n "$action" ]; return ;;
    deploy|undeploy|status|doctor) ;;
    *) usage >&2; err "unknown action '$action'" ;;
  esac
  [ -n "$host" ] || err "which host? e.g. make $action HOST=mac-studio (hosts are in $HOSTS_FILE)"
  need_cmd "$SSH" "install an OpenSSH client"
  need_cmd tar "install tar"
  read_inventory "$host"
  local remote_action
  case "$action" in
    deploy) remote_action=install ;;
    undeploy) remote_action=uninstall ;;
    *) remote_action="$action" ;;
  esac
  say "$action $host ($HOST_KIND, $HOST_MODE) at $HOST_TARGET, sending to $HOST_ENDPOINT$([ "$DRY_RUN" = 1 ] && echo ' [dry run]')"
  local stage
  stage="$(stage_files)"
  run_remote "$remote_action" "$stage"
}

main "$@"
