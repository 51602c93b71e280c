#!/usr/bin/env bash
# The recipe of the bundled model, tinyalbert/data/tinyalbert-mini.h5 (weights/tinyalbert-mini.h5 links to it;
# the model card is weights/README.md).  Run from the repository root, with CORPUS naming the corpus folder.
# The bundled model was trained on the full 70 MB corpus of five public sources (TinyStories, OneStopEnglish,
# Wikinews, Wikipedia, Project Gutenberg), which is not in this repository: tinyalbert/data/corpus holds a
# 2.5 MB sample of it, and its PROVENANCE.md says where each source came from.  `CORPUS=tinyalbert/data/corpus`
# runs the same recipe on that sample, which gives a different and weaker model.
# Each phase ran on one core (OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1), about 151 minutes in all.
set -euo pipefail
CORPUS=${CORPUS:?set CORPUS to the corpus folder, one sub-folder per source (see the comment above)}
OUT=${OUT:-runs/mini}
# the source mix, shared with weights/evaluate_mini.py: `folder:share` lines, folders relative to $CORPUS
DATA=$(grep -v '^#' weights/mini-sources.txt | sed "s|^|$CORPUS/|")
export OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1
mkdir -p "$OUT/phase1" "$OUT/phase2" "$OUT/phase3"
# 1. an 8000-piece ALBERT-style SentencePiece vocabulary of the whole corpus (34 s, deterministic)
[ -f "$OUT/spiece.model" ] || python -m tinyalbert.vocab "$CORPUS" -o "$OUT/spiece.model" --vocab-size 8000 --seed 0
# every phase: sequences of 128, batches of 32, AdamW with decoupled weight decay 0.01, clipping at 1.0;
# "$@" passes the script's own arguments on to every phase
phase() {
    python -m tinyalbert.pretrain --vocab "$OUT/spiece.model" --data $DATA --seq-len 128 --batch-size 32 \
        --optimizer adamw --weight-decay 0.01 --clip 1.0 --log-every 20 --eval-every 500 --eval-batches 16 \
        --checkpoint-every 100 "$@"
}
# 2. phase 1: the shared layer applied once, LeCun (fan-in) weights and sinusoidal starting positions, so
#    that attention leaves the uniform, bag-of-words plateau within a few thousand steps (see weights/README.md)
phase --out "$OUT/phase1" \
    --embedding-size 128 --hidden-size 256 --num-heads 4 --intermediate-size 1024 --num-layers 1 \
    --weight-init fan-in --position-init sinusoid \
    --steps 8000 --warmup 300 --lr 1e-3 --seed 0 --stop-after 3600 "$@"
# 3. phase 2: the same shared layer applied 3 times, a new schedule, other batches (seed 1)
phase --out "$OUT/phase2" --init-from "$OUT/phase1/checkpoint.h5" --num-layers 3 \
    --steps 5000 --warmup 200 --lr 1e-3 --seed 1 "$@"
# 4. phase 3: a gentler schedule (peak 5e-4) at the same depth, other batches (seed 2)
phase --out "$OUT/phase3" --init-from "$OUT/phase2/checkpoint.h5" \
    --steps 2600 --warmup 100 --lr 5e-4 --seed 2 "$@"
# 5. phase 4: a last, longer schedule at the same peak and depth, other batches (seed 3)
phase --out "$OUT" --init-from "$OUT/phase3/checkpoint.h5" \
    --steps 7600 --warmup 200 --lr 5e-4 --seed 3 "$@"
# 6. the bundled copy: float16 halves the file; it is computed in float32 when loaded
python -c "
from tinyalbert.weights import load_params, save
config, params, spiece, attrs = load_params('$OUT/model.h5')
save('tinyalbert/data/tinyalbert-mini.h5', config, params, spiece_model_bytes=spiece,
     provenance={'recipe': 'weights/train_mini.sh', 'source': '$OUT/model.h5'}, dtype='float16')
"
