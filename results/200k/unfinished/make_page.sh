# The planned report of issue 47 (run once every column has 5 seeds archived in results/200k/runs).
BEFORE=$(git rev-parse --short HEAD)   # the commit whose results/200k/point-robot.md is the hand-merged page
python benchmark.py report --runs-dir results/200k/runs --envs point-robot --total-steps 200000 --out-dir results/200k --force \
  --exps focal csro gentle-no-pseudo-transitions gentle metanf-no-flow-no-selection_eval metanf-no-selection_eval metanf-no-flow metanf \
  --compare 'metanf metanf-no-flow' 'metanf:zero_shot metanf-no-selection_eval:zero_shot' 'metanf:zero_shot metanf-no-flow-no-selection_eval:zero_shot' \
    'metanf-no-flow:zero_shot metanf-no-flow-no-selection_eval:zero_shot' 'metanf-no-selection_eval:zero_shot metanf-no-flow-no-selection_eval:zero_shot' \
    'metanf focal' 'metanf csro' 'metanf gentle-no-pseudo-transitions' 'metanf gentle' \
  --note "Table 1 of the Meta-NF paper on point-robot: every column 5 seeds, 200 000 gradient steps, one copy of the data (fingerprint 3889cba0e12c7227, in each run's results.json). The paper's UNICORN is metanf-no-flow-no-selection_eval (the trained metanf --no-flow evaluated with the mean code; unicorn.py computes the same), its w/o selection metanf-no-selection_eval, its w/o NF metanf-no-flow, and its GENTLE gentle-no-pseudo-transitions (the paper ran GENTLE without pseudo-transitions). The earlier page, assembled by hand from November runs on another copy of the data (FOCAL 3 seeds, Meta-NF w/o NF, UNICORN), the tanh(f(0)) Meta-NF runs and the earlier gentle.py, is in git at commit $BEFORE." \
  --command "# Every run: the 2-core Intel CPU, one thread a run, two runs at a time; a run cut by a session's end resumed from its
# last checkpoint in its own folder (the same returns as an uncut run: tests/test_interruptions.py).
python collect_data.py --env point-robot   # data 3889cba0e12c7227
# focal, metanf-no-flow and metanf-no-flow-no-selection_eval: 2026-12-07 to (date of the last run), focal.py and metanf.py of commit be5c117
# (unchanged since); the focal grid and the metanf --no-flow loop ran beside each other.
python benchmark.py run --algos focal --envs point-robot --seeds 0 1 2 3 4 --workers 1 --threads 1
for seed in 0 1 2 3 4; do
  python benchmark.py run --algos \"metanf --no-flow\" --envs point-robot --seeds \$seed --workers 1 --threads 1
  python benchmark.py run --algos \"metanf --no-flow --no-selection\" --eval-of metanf-no-flow --envs point-robot --seeds \$seed --workers 1 --threads 1
done
python benchmark.py archive --runs-dir runs --out-dir results/200k/runs --total-steps 200000 --exps focal metanf-no-flow metanf-no-flow-no-selection_eval
# metanf and metanf-no-selection_eval: 2026-12-04, the flow acting with a sample (--act sample, chosen on the
# development task set); metanf.py of commit cebc3ae (seeds 0, 1), 59e57c9 (seeds 2, 3; progress lines only) and
# 351ecfe (seed 4; a data fingerprint in the checkpoint, no change to training).
python benchmark.py run --algos metanf --envs point-robot --seeds 0 1 2 3 4 --workers 1 --threads 1
python benchmark.py run --algos \"metanf --no-selection\" --eval-of metanf --envs point-robot --seeds 0 1 2 3 4 --workers 1 --threads 1
# csro (2026-12-03) and gentle, gentle-no-pseudo-transitions (2026-12-07): the runs of results/200k/csro and
# results/200k/gentle, whose pages give their commands and commits. The csro and metanf runs predate the fingerprint in
# results.json; results/tools/replay_fingerprint.py established theirs by replaying each run's first 1 000 steps."
