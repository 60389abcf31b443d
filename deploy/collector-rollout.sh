#!/usr/bin/env bash
# tokens-per-watt collector rollout, run on the gateway by `make collector HOST=...`
# (deploy/tpw-deploy.sh copies otelcol/ and this script to the host first).
#
#   collector-rollout.sh apply
#
# Steps: render the --config list for TPW_BACKENDS, `otelcol-contrib validate` it with the real
# environment, keep the running config as the previous one, swap the new one in atomically (a
# symlink renamed over the old one), restart, check health (the health_check endpoint, then
# accepted metric points rising), and roll back to the previous config when any step fails.
# A re-run with nothing changed and a healthy collector changes nothing.
#
# Settings (environment, else the gateway's env file): TPW_BACKENDS (signoz, splunk, o11y, prometheus
#   joined by '+', or all),
#   TPW_MODEL_CLUSTERS (which cluster serves which model: see render_models), DRY_RUN=1,
#   TPW_HEALTH_URL (default http://127.0.0.1:13133/), TPW_METRICS_URL (default
#   http://127.0.0.1:8888/metrics), TPW_HEALTH_WAIT (s, default 30), TPW_REQUIRE_TRAFFIC (1: accepted
#   points must rise within TPW_TRAFFIC_WAIT s, default 1/60; 0 for a lab with no exporters yet),
#   TPW_ROOT and TPW_PATH_PREPEND (tests only).
set -euo pipefail

STAGE="$(cd "$(dirname "$0")" && pwd)"
ROOT="${TPW_ROOT:-}"
DRY_RUN="${DRY_RUN:-0}"
CONF_DIR="$ROOT/etc/otelcol-contrib"
ENV_FILE="$CONF_DIR/otelcol-contrib.conf"
SERVICE="otelcol-contrib.service"
HEALTH_URL="${TPW_HEALTH_URL:-http://127.0.0.1:13133/}"
METRICS_URL="${TPW_METRICS_URL:-http://127.0.0.1:8888/metrics}"
HEALTH_WAIT="${TPW_HEALTH_WAIT:-30}"
REQUIRE_TRAFFIC="${TPW_REQUIRE_TRAFFIC:-1}"
TRAFFIC_WAIT="${TPW_TRAFFIC_WAIT:-60}"
if [ -n "${TPW_PATH_PREPEND:-}" ]; then PATH="$TPW_PATH_PREPEND:$PATH"; fi

say() { printf 'tpw[%s]: %s\n' "$(hostname -s 2>/dev/null || hostname)" "$*"; }
err() { printf 'tpw[%s]: error: %s\n' "$(hostname -s 2>/dev/null || hostname)" "$*" >&2; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || err "'$1' is needed on this host: $2"; }

fetch() {  # print a URL's body; fail on anything but 2xx
  if command -v curl >/dev/null 2>&1; then curl -fsS --max-time 5 "$1"
  else python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; fi
}

# TPW_BACKENDS: backends joined by '+' (signoz, splunk, o11y, prometheus), e.g. signoz+prometheus;
# `all` is signoz+splunk+o11y. Prints them one a line, in a fixed order, or stops with the fix.
backend_list() {
  local want="${1:-signoz}" b found=""
  [ "$want" = all ] && want="signoz+splunk+o11y"
  for b in ${want//+/ }; do
    case "$b" in
      signoz|splunk|o11y|prometheus) found="$found $b" ;;
      *) err "TPW_BACKENDS='$1': '$b' is not a backend; join signoz, splunk, o11y and prometheus with '+' (or use all)" ;;
    esac
  done
  for b in signoz splunk o11y prometheus; do
    case " $found " in *" $b "*) echo "$b" ;; esac
  done
}

config_files() {  # the --config files for TPW_BACKENDS, relative to otelcol/ (the last two are rendered)
  local b
  backend_list "$1" >/dev/null  # here, not in a subshell: a wrong name stops the rollout
  printf 'gateway.yaml'
  for b in $(backend_list "$1"); do printf ' backends/%s.yaml' "$b"; done
  echo " models.yaml pipelines.yaml"
}

# The pipelines of the chosen backends. Prometheus takes metrics only; a signal no chosen backend
# takes gets no pipeline (a pipeline without exporters is an invalid config).
render_pipelines() {
  local b metrics="" traces="" logs=""
  backend_list "$1" >/dev/null
  for b in $(backend_list "$1"); do
    case "$b" in
      signoz) metrics="$metrics otlp/signoz"; traces="$traces otlp/signoz"; logs="$logs otlp/signoz" ;;
      splunk) metrics="$metrics splunk_hec/metrics"; traces="$traces splunk_hec/events"; logs="$logs splunk_hec/events" ;;
      o11y) metrics="$metrics signalfx"; traces="$traces otlphttp/o11y_traces signalfx" ;;
      prometheus) metrics="$metrics prometheus" ;;
    esac
  done
  echo "# Rendered by make collector from TPW_BACKENDS=$1"
  echo "service:"
  echo "  pipelines:"
  echo "    metrics:"
  echo "      receivers: [otlp, prometheus/llamacpp]"
  echo "      processors: [memory_limiter, attributes/genai_cardinality, transform/genai_cluster, transform/llamacpp_names, batch]"
  echo "      exporters: [$(yaml_list "$metrics")]"
  if [ -n "$traces" ]; then
    printf '    traces:\n      receivers: [otlp]\n      processors: [memory_limiter, batch]\n'
    echo "      exporters: [$(yaml_list "$traces")]"
  fi
  if [ -n "$logs" ]; then
    printf '    logs:\n      receivers: [otlp]\n      processors: [memory_limiter, batch]\n'
    echo "      exporters: [$(yaml_list "$logs")]"
  fi
}

yaml_list() {  # " a b" -> "a, b"
  local item out=""
  for item in $1; do out="$out, $item"; done
  echo "${out#, }"
}

# LiteLLM's token and latency metrics name the model (gen_ai.request.model, the upstream model id
# without its provider prefix), not the cluster that served it. TPW_MODEL_CLUSTERS says which is
# which, e.g. "mlx-community/Qwen3-30B-A3B-4bit=mac-exo,qwen3-30b-a3b=nvidia"; this renders the
# transform that puts `cluster` on those points, so every efficiency panel can join a cluster's
# tokens with the same cluster's energy. A model missing from the map gets cluster="unmapped".
render_models() {
  local map="$1" pair model cluster
  echo "# Rendered by make collector from TPW_MODEL_CLUSTERS=$map"
  echo "processors:"
  echo "  transform/genai_cluster:"
  echo "    error_mode: ignore"
  echo "    metric_statements:"
  echo "      - context: datapoint"
  echo "        conditions:"
  echo "          - IsMatch(metric.name, \"^gen_ai[.]\")"
  echo "        statements:"
  IFS=',' read -r -a pairs <<< "$map"
  for pair in "${pairs[@]}"; do
    pair="${pair// /}"
    [ -n "$pair" ] || continue
    model="${pair%=*}"
    cluster="${pair##*=}"
    if [ "$model" = "$pair" ] || [[ ! "$model" =~ ^[A-Za-z0-9._:/@+-]+$ ]] || [[ ! "$cluster" =~ ^[A-Za-z0-9._-]+$ ]]; then
      err "TPW_MODEL_CLUSTERS: '$pair' is not MODEL=CLUSTER (model: letters, digits and ._:/@+-; cluster: letters, digits and ._-)"
    fi
    echo "          - set(attributes[\"cluster\"], \"$cluster\") where attributes[\"gen_ai.request.model\"] == \"$model\""
  done
  echo "          - set(attributes[\"cluster\"], \"unmapped\") where attributes[\"cluster\"] == nil"
}

options_for() {  # OTELCOL_OPTIONS for the files of a profile under a config folder
  local dir="$1" file out=""
  for file in $FILES; do out="$out --config=$dir/$file"; done
  echo "${out# }"
}

current_options() { sed -n 's/^OTELCOL_OPTIONS="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ENV_FILE" 2>/dev/null | tail -n 1; }

# Rewrite only the OTELCOL_OPTIONS line; tokens and everything else in the env file stay.
write_options() {
  local tmp="$ENV_FILE.tpw-new"
  { grep -v '^OTELCOL_OPTIONS=' "$ENV_FILE" || true; echo "OTELCOL_OPTIONS=\"$1\""; } > "$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

healthy() {
  local waited=0
  while [ "$waited" -lt "$HEALTH_WAIT" ]; do
    if fetch "$HEALTH_URL" >/dev/null 2>&1; then return 0; fi
    sleep 1; waited=$((waited + 1))
  done
  return 1
}

# Points the otlp receiver accepted (what the exporters and LiteLLM send), or empty when unreadable.
# Only that receiver: a llama.cpp scrape adds up/scrape_* points every 15 s even when it fails, so
# counting every receiver would call a collector with no exporter sending "rising".
accepted_points() {
  fetch "$METRICS_URL" 2>/dev/null \
    | awk '/^otelcol_receiver_accepted_metric_points\{([^}]*,)?receiver="otlp"[,}]/ {sum += $NF; seen = 1} END {if (seen) printf "%d\n", sum}'
}

traffic_rises() {
  [ "$REQUIRE_TRAFFIC" = 1 ] || return 0
  local first now waited=0
  first="$(accepted_points)"
  [ -n "$first" ] || { say "no otelcol_receiver_accepted_metric_points of the otlp receiver at $METRICS_URL"; return 1; }
  while [ "$waited" -lt "$TRAFFIC_WAIT" ]; do
    sleep 1; waited=$((waited + 1))
    now="$(accepted_points)"
    if [ -n "$now" ] && [ "$now" -gt "$first" ]; then say "accepted metric points rising ($first -> $now)"; return 0; fi
  done
  say "accepted metric points did not rise within ${TRAFFIC_WAIT}s (are the exporters sending here?)"
  return 1
}

restart_and_check() {
  systemctl restart "$SERVICE" || return 1
  healthy || { say "health check at $HEALTH_URL failed"; return 1; }
  traffic_rises
}

# ------------------------------------------------------------------ steps

ensure_env_file() {
  [ -f "$ENV_FILE" ] && return
  say "create $ENV_FILE from collector.env.example (fill in the tokens, mode 0600)"
  [ "$DRY_RUN" = 1 ] && return
  mkdir -p "$CONF_DIR"
  cp "$STAGE/otelcol/collector.env.example" "$ENV_FILE"
  chmod 0600 "$ENV_FILE"
}

stage_new_config() {  # copy the profile's files into tpw-<hash>; prints that folder's name
  local file hash
  render_models "$MODEL_CLUSTERS" > "$STAGE/otelcol/models.yaml"
  render_pipelines "$PROFILE" > "$STAGE/otelcol/pipelines.yaml"
  hash="$( (for file in $FILES; do echo "== $file"; cat "$STAGE/otelcol/$file"; done) | cksum | cut -d' ' -f1)"
  NEW_NAME="tpw-$hash"
  if [ "$DRY_RUN" = 1 ] || [ -d "$CONF_DIR/$NEW_NAME" ]; then return; fi
  for file in $FILES; do
    mkdir -p "$CONF_DIR/$NEW_NAME.tmp/$(dirname "$file")"
    cp "$STAGE/otelcol/$file" "$CONF_DIR/$NEW_NAME.tmp/$file"
  done
  chmod -R go-w "$CONF_DIR/$NEW_NAME.tmp"
  mv "$CONF_DIR/$NEW_NAME.tmp" "$CONF_DIR/$NEW_NAME"
}

# memory_limiter refuses to start when its limit is not above its spike limit; say so before any
# rollout, in words, instead of a validate error.
check_memory_setting() {
  local limit spike
  limit="$(sed -n 's/^TPW_COLLECTOR_MEMORY_MIB=//p' "$ENV_FILE" 2>/dev/null | tail -n 1)"
  [ -n "$limit" ] || return 0
  spike="$(awk '/spike_limit_mib:/ {print $2; exit}' "$CONF_DIR/$NEW_NAME/gateway.yaml")"
  case "$limit" in
    *[!0-9]*) err "TPW_COLLECTOR_MEMORY_MIB=$limit in $ENV_FILE is not a number of MiB; set it above $spike (default 512)" ;;
  esac
  if [ "$limit" -le "$spike" ]; then
    rm -rf "${CONF_DIR:?}/$NEW_NAME"
    err "TPW_COLLECTOR_MEMORY_MIB=$limit in $ENV_FILE is at or below the memory_limiter spike limit ($spike MiB); set it above $spike (default 512). The running config is untouched"
  fi
}

validate_new_config() {
  local options
  options="$(options_for "$CONF_DIR/$NEW_NAME")"
  say "validate: otelcol-contrib validate $options"
  [ "$DRY_RUN" = 1 ] && return
  # The same environment the service gets, so a missing token fails here and not at restart.
  # shellcheck disable=SC2086,SC1090  # options is a list of --config flags; the env file is the host's
  if ! (set -a; . "$ENV_FILE"; set +a; otelcol-contrib validate $options); then
    rm -rf "${CONF_DIR:?}/$NEW_NAME"
    err "the new collector config does not validate (see above); the running config is untouched"
  fi
}

swap_to() {  # point the tpw symlink at a config folder, atomically
  ln -sfn "$1" "$CONF_DIR/tpw.tpw-new"
  mv -Tf "$CONF_DIR/tpw.tpw-new" "$CONF_DIR/tpw"
}

setting() {  # NAME: from the environment, else the env file's last NAME= line
  local value="${!1:-}"
  if [ -z "$value" ]; then value="$(sed -n "s/^$1=//p" "$ENV_FILE" 2>/dev/null | tail -n 1)"; fi
  printf '%s' "$value"
}

main() {
  case "${1:-}" in  # the rendering steps alone, for the tests and a curious reader
    render-models) render_models "${TPW_MODEL_CLUSTERS:-}"; return ;;
    render-pipelines) render_pipelines "${TPW_BACKENDS:-signoz}"; return ;;
    config-files) config_files "${TPW_BACKENDS:-signoz}"; return ;;
  esac
  [ "${1:-}" = apply ] || err "usage: collector-rollout.sh apply | render-models | render-pipelines | config-files"
  need_cmd otelcol-contrib "install the otelcol-contrib package (0.13x-0.16x) first"
  need_cmd systemctl "the gateway runs otelcol-contrib as a systemd service"
  local profile
  ensure_env_file
  profile="$(setting TPW_BACKENDS)"
  PROFILE="${profile:-signoz}"
  MODEL_CLUSTERS="$(setting TPW_MODEL_CLUSTERS)"
  FILES="$(config_files "$PROFILE")"
  stage_new_config
  local want_options previous_name previous_options
  want_options="$(options_for "$CONF_DIR/tpw")"
  previous_name="$(readlink "$CONF_DIR/tpw" 2>/dev/null || true)"
  previous_options="$(current_options)"
  if [ "$previous_name" = "$NEW_NAME" ] && [ "$previous_options" = "$want_options" ] && systemctl is-active --quiet "$SERVICE"; then
    say "no change: collector config ${profile:-signoz} ($NEW_NAME) is already running"
    return
  fi
  check_memory_setting
  validate_new_config
  say "roll out $NEW_NAME (backends: ${profile:-signoz}); previous: ${previous_name:-none}"
  if [ "$DRY_RUN" = 1 ]; then say "dry run: nothing changed"; return; fi
  cp -p "$ENV_FILE" "$ENV_FILE.previous"
  swap_to "$NEW_NAME"
  write_options "$want_options"
  if restart_and_check; then
    say "collector healthy on $NEW_NAME"
    for old in "$CONF_DIR"/tpw-*; do  # keep the running and the previous config only
      case "$(basename "$old")" in "$NEW_NAME"|"$previous_name") ;; *) rm -rf "$old" ;; esac
    done
    return
  fi
  say "rolling back to ${previous_name:-the previous config}"
  if [ -n "$previous_name" ]; then swap_to "$previous_name"; else rm -f "$CONF_DIR/tpw"; fi
  mv -f "$ENV_FILE.previous" "$ENV_FILE"
  if [ -n "$previous_name" ] && restart_and_check; then
    err "the new config failed its health check; rolled back to $previous_name, which is healthy again"
  fi
  err "the new config failed its health check and the previous one is not healthy either: check journalctl -u $SERVICE"
}

main "$@"
