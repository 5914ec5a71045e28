#!/bin/sh
# The randomized convergence property (tests/cluster/convergence-random.test.ts) with many runs: a soak, not part
# of `npm test`. Every run is a fresh table on one 3-node cluster, so 200 runs take about half an hour.
#   PGMESH_CONVERGENCE_RUNS  number of runs (default here 200; the default test run does 4)
#   PGMESH_SEED              replay a seed printed by a failed run (add PGMESH_SEED_PATH to replay one case)
#   PGMESH_SHRINK=1          let fast-check shrink a counterexample (each attempt is a cluster run: slow)
#   PGMESH_TRACE=1           print every step as it runs
set -eu
cd "$(dirname "$0")/.."
PGMESH_CONVERGENCE_RUNS="${PGMESH_CONVERGENCE_RUNS:-200}"
export PGMESH_CONVERGENCE_RUNS
exec node --import tsx --test tests/cluster/convergence-random.test.ts
