#!/usr/bin/env bash
# Start, stop and inspect the labotel monitoring stack (docker-compose.yml beside this file).
#
#   ./start-monitoring.sh start            build the demo image, start everything, print URLs
#   ./start-monitoring.sh stop             stop and remove the containers (data volumes kept)
#   ./start-monitoring.sh status           containers, health, and whether each URL answers
#   ./start-monitoring.sh logs [SERVICE]   follow the logs (all services, or one)
#
# Alerting settings (SMTP_*, ALERT_EMAIL_*, SLACK_*) come from the environment or from
# compose/.env (copy .env.example); Alertmanager's config is rendered from them at start.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
compose_file="$here/docker-compose.yml"
bind="${LABOTEL_BIND:-127.0.0.1}"

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# The compose command, or a clear explanation of what is missing and how to get it.
find_compose() {
    if ! command -v docker >/dev/null 2>&1; then
        cat >&2 <<'MSG'
start-monitoring: Docker is not installed (no `docker` command on PATH).
The stack runs in containers: install Docker Engine or Docker Desktop with the Compose
plugin (https://docs.docker.com/engine/install/), then run this script again.
Without Docker you can still run the pieces by hand: `labotel demo`, `labotel
alerts-webhook`, and the `prometheus` / `alertmanager` binaries with the configs in compose/.
MSG
        exit 127
    fi
    if docker compose version >/dev/null 2>&1; then
        compose=(docker compose)
        wait_flags=(--wait --wait-timeout 180)  # v2: return once health checks pass
    elif command -v docker-compose >/dev/null 2>&1; then
        compose=(docker-compose)                # v1 has no --wait
        wait_flags=()
    else
        echo "start-monitoring: Docker is installed but the Compose plugin is not" \
             "(\`docker compose version\` fails). Install docker-compose-plugin." >&2
        exit 127
    fi
    compose+=(--project-name labotel --file "$compose_file")
}

require_engine() {
    if ! docker info >/dev/null 2>&1; then
        echo "start-monitoring: cannot reach the Docker engine (\`docker info\` fails)." \
             "Start Docker (e.g. \`sudo systemctl start docker\`) or check DOCKER_HOST." >&2
        exit 1
    fi
}

urls() {
    cat <<MSG

  LabEnd demo      http://$bind:8080         (/metrics, /debug/pprof/, /admin/monitoring/)
  Grafana          http://$bind:3000         (admin / \${GRAFANA_ADMIN_PASSWORD:-admin})
  Prometheus       http://$bind:9090         (alerts: /alerts, targets: /targets)
  Alertmanager     http://$bind:9093
  Jaeger           http://$bind:16686
  Alert webhook    http://$bind:5001/alerts  (the last alerts received, as JSON)
  OTLP in          grpc $bind:4317, http $bind:4318

  Provoke a race:  curl -X POST http://$bind:8080/faults/race
MSG
}

probe() {  # name url
    if command -v curl >/dev/null 2>&1 && curl -fsS -o /dev/null --max-time 3 "$2"; then
        printf '  %-14s up    %s\n' "$1" "$2"
    else
        printf '  %-14s DOWN  %s\n' "$1" "$2"
    fi
}

command="${1:-help}"
case "$command" in
    start)
        find_compose
        require_engine
        "${compose[@]}" up --detach --build "${wait_flags[@]}" || {
            echo "start-monitoring: some services did not become healthy; see" \
                 "'$0 status' and '$0 logs SERVICE'." >&2
            exit 1
        }
        echo "labotel monitoring stack is up:"
        urls
        ;;
    stop)
        find_compose
        require_engine
        "${compose[@]}" down
        echo "Stopped. Prometheus, Alertmanager and Grafana data are kept in volumes" \
             "(remove them with: ${compose[*]} down --volumes)."
        ;;
    status)
        find_compose
        require_engine
        "${compose[@]}" ps
        echo
        probe labend "http://$bind:8080/healthz"
        probe webhook "http://$bind:5001/healthz"
        probe prometheus "http://$bind:9090/-/ready"
        probe alertmanager "http://$bind:9093/-/ready"
        probe grafana "http://$bind:3000/api/health"
        probe jaeger "http://$bind:16686/"
        probe collector "http://$bind:13133/"
        ;;
    logs)
        find_compose
        require_engine
        shift
        "${compose[@]}" logs --follow --tail=100 "$@"
        ;;
    help|-h|--help)
        usage
        ;;
    *)
        echo "start-monitoring: unknown command '$command'" >&2
        usage >&2
        exit 2
        ;;
esac
