#!/usr/bin/env bash
# The long-context accuracy runs recorded in benchmarks/RESULTS.md (issue: passkey and needle
# at 137K and 1M tokens, the no-prefix ablation, the in-context baseline). Two streams, one
# torch thread each, so that both cores work without oversubscription (docs/LONGCONTEXT.md).
# Results: benchmarks/results/longcontext/<run>/ (JSON of every trial + PNG heatmaps).
set -euo pipefail
cd "$(dirname "$0")/.."
ESSAYS=${ESSAYS:-../shared/data/paul_graham_essays}
OUT=benchmarks/results/longcontext
DEPTHS=0,25,50,75,100
(
  larimar-ext passkey --context 137k,1m --digits 3,4,5 --depths $DEPTHS --trials 20 \
      --threads 1 --no-progress --out $OUT/passkey
  larimar-ext passkey --context 137k --digits 3,4,5 --depths $DEPTHS --trials 20 --no-prefix \
      --threads 1 --no-progress --out $OUT/passkey_no_prefix
) > $OUT.passkey.log 2>&1 &
(
  larimar-ext needle --haystack-dir "$ESSAYS" --context 137k,1m --depths $DEPTHS --trials 4 \
      --threads 1 --no-progress --out $OUT/needle
  larimar-ext needle --haystack-dir "$ESSAYS" --context 137k --depths $DEPTHS --trials 4 \
      --no-prefix --threads 1 --no-progress --out $OUT/needle_no_prefix
  larimar-ext passkey --context 1k,2k,4k,8k --digits 5 --depths $DEPTHS --trials 1 \
      --threads 1 --no-progress --out $OUT/passkey_short
  larimar-ext passkey --context 1k,2k,4k,8k --digits 5 --depths $DEPTHS --trials 1 \
      --baseline in-context --threads 1 --no-progress --out $OUT/passkey_in_context
) > $OUT.needle.log 2>&1 &
wait
# values from the int8 encoder (faster ingest): the same tasks, both cores
larimar-ext needle --haystack-dir "$ESSAYS" --context 137k,1m --depths $DEPTHS --trials 4 \
    --int8-values --threads 2 --no-progress --out $OUT/needle_int8
larimar-ext passkey --context 137k,1m --digits 3,4,5 --depths $DEPTHS --trials 4 \
    --int8-values --threads 2 --no-progress --out $OUT/passkey_int8
# the recall mode (the default since the recall issue) and a paper-mode rerun beside it:
# 4 passkey trials and 2 needle trials per cell, one torch thread each
for MODE in recall paper; do
  larimar-ext passkey --context 137k,1m --digits 3,4,5 --depths $DEPTHS --trials 4 --mode $MODE \
      --threads 1 --no-progress --out $OUT/passkey_$MODE
  larimar-ext needle --haystack-dir "$ESSAYS" --context 137k,1m --depths $DEPTHS --trials 2 \
      --mode $MODE --threads 1 --no-progress --out $OUT/needle_$MODE
done
