#!/usr/bin/env bash
# The recipe of the bundled model, tinyalbert/data/tinyalbert-mini.h5 (weights/tinyalbert-mini.h5 links to it;
# the model card is weights/README.md).  Run from the repository root; ../shared/corpus must be present.
# One run on this project's 2-core machine, both cores (about 85 minutes).  It was paused once for a
# benchmark and continued with --resume, which ends bitwise equal to an uninterrupted run.
set -euo pipefail
OUT=${OUT:-runs/mini}
# Everyday English first: by bytes the corpus is half 19th-century fiction (see weights/README.md).
DATA="../shared/corpus/tinystories:0.45 ../shared/corpus/onestopenglish:0.2 ../shared/corpus/wikinews:0.15
      ../shared/corpus/wikipedia:0.1 ../shared/corpus/gutenberg:0.1"
mkdir -p "$OUT"
# 1. an 8000-piece ALBERT-style SentencePiece vocabulary of the whole corpus (34 s, deterministic)
[ -f "$OUT/spiece.model" ] || python -m tinyalbert.vocab ../shared/corpus -o "$OUT/spiece.model" --vocab-size 8000 --seed 0
# 2. pretraining: MLM + SOP, AdamW, 300 warm-up steps then linear decay to 0 at step 4800
python -m tinyalbert.pretrain --out "$OUT" --vocab "$OUT/spiece.model" --data $DATA \
    --embedding-size 128 --hidden-size 256 --num-heads 4 --intermediate-size 1024 --num-layers 6 \
    --seq-len 128 --batch-size 32 --steps 4800 --warmup 300 --optimizer adamw --lr 1e-3 \
    --weight-decay 0.01 --clip 1.0 --seed 0 --log-every 20 --eval-every 400 --eval-batches 16 \
    --checkpoint-every 100 "$@"
# 3. the bundled copy: float16 halves the file; it is computed in float32 when loaded
python -c "
from tinyalbert.weights import load_params, save
config, params, spiece, attrs = load_params('$OUT/model.h5')
save('tinyalbert/data/tinyalbert-mini.h5', config, params, spiece_model_bytes=spiece,
     provenance={'recipe': 'weights/train_mini.sh', 'source': '$OUT/model.h5'}, dtype='float16')
"
