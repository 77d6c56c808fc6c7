#!/usr/bin/env bash
# 8-trial studies, one trial at a time (--population 1) vs populations (default), A B A B,
# wall time of the whole command (start-up included), 1 thread fixed, load noted.
cd "$(dirname "$0")/.."
for study in digits_augment char_gpt; do
  for rep in 1 2; do
    for pop in 1 auto; do
      db=$(mktemp -d)
      extra=(); [ "$pop" = 1 ] && extra=(--population 1)
      load=$(cut -d' ' -f1 /proc/loadavg)
      start=$(date +%s.%N)
      python -m lrsearch run --study studies/$study.toml --n-trials 8 --no-baselines --threads 1 \
        --storage sqlite:///$db/s.db --artifact-dir $db/art "${extra[@]}" > $db/out.txt 2>&1
      rc=$?
      end=$(date +%s.%N)
      echo "$study rep=$rep population=$pop rc=$rc wall=$(echo "$end - $start" | bc) load_start=$load load_end=$(cut -d' ' -f1 /proc/loadavg) $(grep -m1 -o 'populations of up to [0-9]* trials\|one trial at a time' $db/out.txt)"
      rm -rf $db
    done
  done
done
