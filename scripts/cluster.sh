#!/usr/bin/env bash
# The whole local cluster on loopback, in order: HDFS, YARN, and the Spark
# standalone cluster (a master and two workers; conf/cluster.toml).
# Run with: ./scripts/cluster.sh start|stop|status [hdfs|yarn|spark ...]
#   (no service names: all three; stop goes in reverse order)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$root/.venv/bin/python" ]] || { echo "error: run ./scripts/setup.sh first" >&2; exit 1; }
cd "$root"
action="${1:-}"
case "$action" in
  start|stop|status|restart) shift ;;
  *) echo "usage: ./scripts/cluster.sh start|stop|status|restart [hdfs|yarn|spark ...]" >&2; exit 2 ;;
esac
services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(hdfs yarn spark)
for s in "${services[@]}"; do
  [[ "$s" =~ ^(hdfs|yarn|spark)$ ]] || { echo "error: unknown service '$s' (hdfs, yarn, spark)" >&2; exit 2; }
done
if [[ "$action" == stop ]]; then
  ordered=()
  for s in spark yarn hdfs; do [[ " ${services[*]} " == *" $s "* ]] && ordered+=("$s"); done
  services=("${ordered[@]}")
fi
rc=0
for s in "${services[@]}"; do
  "$root/.venv/bin/python" -m infra "$s" "$action" || rc=$?
  [[ $rc -eq 0 || "$action" == status ]] || exit $rc
done
exit $rc
