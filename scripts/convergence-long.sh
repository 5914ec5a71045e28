#!/bin/sh
# The randomized convergence properties with many runs: a soak, not part of `npm test`.
#   tests/cluster/convergence-random.test.ts  agents stopped and started (whole nodes held); a fresh table per run
#   tests/cluster/convergence-links.test.ts   single links held, released and cut through a TCP proxy per link,
#                                             agents killed with SIGKILL; out-of-line values and delta columns
# 200 runs of each take about an hour.
#   PGMESH_CONVERGENCE_RUNS  runs of convergence-random (default here 200; the default test run does 4)
#   PGMESH_LINK_RUNS         runs of convergence-links (default here 200; the default test run does 4)
#   PGMESH_SEED              replay a seed printed by a failed run (add PGMESH_SEED_PATH to replay one case)
#   PGMESH_SHRINK=1          let fast-check shrink a counterexample of convergence-random (slow)
#   PGMESH_TRACE=1           print every step as it runs
set -eu
cd "$(dirname "$0")/.."
PGMESH_CONVERGENCE_RUNS="${PGMESH_CONVERGENCE_RUNS:-200}"
PGMESH_LINK_RUNS="${PGMESH_LINK_RUNS:-200}"
export PGMESH_CONVERGENCE_RUNS PGMESH_LINK_RUNS
exec node --import tsx --test --test-timeout=0 tests/cluster/convergence-random.test.ts tests/cluster/convergence-links.test.ts
