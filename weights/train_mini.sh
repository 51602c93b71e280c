#!/usr/bin/env bash
# The recipe of the bundled model, tinyalbert/data/tinyalbert-mini.h5 (weights/tinyalbert-mini.h5 links to it;
# the model card is weights/README.md).  Run from the repository root; ../shared/corpus must be present.
# It ran in two phases on this project's 2-core machine, sharing it with other work:
#   phase 1 on one core (OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 taskset -c 1), stopped at step 1250 of 2200;
#   phase 2 from that checkpoint with both cores.
set -euo pipefail
OUT=${OUT:-runs/mini}
DATA="../shared/corpus/tinystories:0.35 ../shared/corpus/onestopenglish:0.2 ../shared/corpus/wikinews:0.2
      ../shared/corpus/wikipedia:0.1 ../shared/corpus/gutenberg:0.15"
mkdir -p "$OUT/phase1"
# 1. an 8000-piece ALBERT-style SentencePiece vocabulary of the whole corpus (34 s, deterministic)
[ -f "$OUT/spiece.model" ] || python -m tinyalbert.vocab ../shared/corpus -o "$OUT/spiece.model" --vocab-size 8000 --seed 0
# 2. phase 1: sources sampled per example, everyday English first (see weights/README.md)
python -m tinyalbert.pretrain --out "$OUT/phase1" --vocab "$OUT/spiece.model" --data $DATA \
    --embedding-size 128 --hidden-size 256 --num-heads 4 --intermediate-size 1024 --num-layers 6 \
    --seq-len 128 --batch-size 32 --steps 2200 --warmup 200 --optimizer lamb --lr 3e-3 \
    --weight-decay 0.01 --clip 1.0 --seed 0 --log-every 20 --eval-every 250 --eval-batches 16 \
    --checkpoint-every 250 --stop-after 1250 "$@"
# 3. phase 2: a new LAMB schedule from the phase-1 checkpoint, other batches (seed 1)
python -m tinyalbert.pretrain --out "$OUT" --vocab "$OUT/spiece.model" --data $DATA \
    --init-from "$OUT/phase1/checkpoint.h5" \
    --seq-len 128 --batch-size 32 --steps 2000 --warmup 100 --optimizer lamb --lr 3e-3 \
    --weight-decay 0.01 --clip 1.0 --seed 1 --log-every 20 --eval-every 250 --eval-batches 16 \
    --checkpoint-every 250 "$@"
# 4. the bundled copy: float16 halves the file; it is computed in float32 when loaded
python -c "
from tinyalbert.weights import load_params, save
config, params, spiece, attrs = load_params('$OUT/model.h5')
save('tinyalbert/data/tinyalbert-mini.h5', config, params, spiece_model_bytes=spiece,
     provenance={'recipe': 'weights/train_mini.sh', 'source': '$OUT/model.h5'}, dtype='float16')
"
