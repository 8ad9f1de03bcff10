#!/usr/bin/env bash
# Runs test files again and again, to prove they do not flake: each file RUNS times in a row
# (default 10), stopping at the first failure and keeping its whole output.
#
#   scripts/repeat-tests.sh                       # the files that start processes, 10 runs each
#   RUNS=20 scripts/repeat-tests.sh test/topologies/sentinel.test.ts
#   FULL=3 scripts/repeat-tests.sh                # npm test, 3 full runs in a row (coverage and all)
#
# Prints one line per run and a tally; exits 1 at the first failure (its output is in $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
OUT=${OUT:-$(mktemp -d -t rotor-repeat-XXXXXX)}
mkdir -p "$OUT"
files=("$@")
# By default: every file that starts processes of its own (redis-servers, sentinels, clusters, Rotor servers, Django, Chromium, npm).
[ ${#files[@]} -gt 0 ] || files=(
  test/topologies/sentinel.test.ts test/topologies/cluster.test.ts test/topologies/replication.test.ts
  test/topologies/multi-instance.test.ts test/topologies/store-faults.test.ts test/topologies/workers.test.ts
  test/topologies/shutdown.test.ts
  test/plugins/redis-setup.test.ts test/plugins/config.test.ts test/plugins/denylist.test.ts
  test/plugins/rate-limit.test.ts test/plugins/key-rotation.test.ts
  test/ops/management.test.ts test/ops/operations.test.ts test/ops/keys-cli.test.ts
  test/interop/django.test.ts test/interop/verifier-example.test.ts test/interop/browser.test.ts
  test/interop/openid-client.test.ts test/interop/authlib.test.ts
  test/client/client.test.ts test/client/client-browser.test.ts test/client/client-package.test.ts
  test/issues/11-sentinel-split-brain.test.ts test/issues/12-answer-lost.test.ts
  test/issues/12-redis-out-of-memory.test.ts test/issues/12-silent-connection.test.ts
  test/issues/12-store-loss.test.ts
)

run() { # label, log file, command...
  local label=$1 log=$2; shift 2
  local start=$SECONDS
  if "$@" >"$log" 2>&1; then
    echo "pass  $label  $((SECONDS - start)) s"
  else
    echo "FAIL  $label  $((SECONDS - start)) s  (output: $log)"
    grep -E '^\s*not ok' "$log" | head -5
    return 1
  fi
}

if [ -n "${FULL:-}" ]; then
  for i in $(seq "$FULL"); do run "npm test #$i" "$OUT/npm-test-$i.log" npm test || exit 1; done
  echo "npm test: $FULL of $FULL runs passed ($(node --version))"
  exit 0
fi

for file in "${files[@]}"; do
  name=$(basename "$file" .test.ts)
  for i in $(seq "$RUNS"); do
    run "$name #$i" "$OUT/$name-$i.log" npx tap --disable-coverage --reporter=tap "$file" || exit 1
  done
  echo "$name: $RUNS of $RUNS runs passed"
done
echo "every file passed $RUNS runs in a row ($(node --version)); logs in $OUT"
