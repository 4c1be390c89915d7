#!/usr/bin/env bash
# Build and test the ranker clients from a fresh clone: the shared vectors are fresh (Python), then the
# Go and Java readers pass them and their integration tests against a real redis-server, with maps
# written by the Python publisher. Uses the project virtualenv (built by `make` if missing), the
# machine's Go toolchain and Maven (dependencies from Maven Central / the Go module proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

make -s .venv/bin/recal
export RECAL_PYTHON="$root/.venv/bin/python"
if [ -z "${RECAL_REDIS_SERVER:-}" ]; then
  if [ -x "$root/.venv/bin/redis-server" ]; then
    RECAL_REDIS_SERVER="$root/.venv/bin/redis-server"
  elif command -v redis-server >/dev/null 2>&1; then
    RECAL_REDIS_SERVER=$(command -v redis-server)
  else
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server) \
      >/tmp/recal-clients-apt.log 2>&1
    RECAL_REDIS_SERVER=$(command -v redis-server)
  fi
fi
export RECAL_REDIS_SERVER

echo "== vectors (Python core)"
.venv/bin/python clients/testdata/generate.py --check
.venv/bin/pytest -q -p no:cacheprovider clients/testdata

echo "== Go client"
go=$(command -v go || echo /usr/local/go/bin/go)
(cd clients/go && "$go" vet ./... && "$go" test -count=1 ./... && "$go" test -count=1 -race -run Concurrent ./...)

echo "== Java client"
(cd clients/java && mvn -B -q -Dstyle.color=never test)
for report in clients/java/target/surefire-reports/*.txt; do grep -h "Tests run" "$report"; done
