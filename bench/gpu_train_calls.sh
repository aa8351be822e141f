#!/usr/bin/env bash
# The train benchmark as run on the GPU machine (see docs/benchmarks.md). Usage, from the repo root
# with .site (shared/device/build-site.sh) and .bench_tok (the tiny model's tokenizer files) present:
#   bash bench/gpu_train_calls.sh A   # model + Unsloth path + bare baseline
#   bash bench/gpu_train_calls.sh B   # model (if gone) + transformers/PEFT path + low_vram_8gb preset
#   bash bench/gpu_train_calls.sh C   # the train stage itself on the 7B shape (defaults, low_vram_8gb),
#                                     # then the transformers/PEFT path and the default path on full rows
#   STEPS=6 bash bench/gpu_train_calls.sh D   # the final comparison, baseline and smm in one call
#   STEPS=6 bash bench/gpu_train_calls.sh E   # full rows: Unsloth's bare loop vs smm's Unsloth path
#   STEPS=6 bash bench/gpu_train_calls.sh F   # which setting slows smm's full rows (optimizer, logging)
#   STEPS=6 bash bench/gpu_train_calls.sh G   # the final comparison after auto → adamw_8bit, both baselines
#   STEPS=6 bash bench/gpu_train_calls.sh H   # cold compile caches: per-step times; the low-VRAM preset
#   bash bench/gpu_train_calls.sh I           # Unsloth's bare loop vs smm's Unsloth path, 14 steps, medians
#   bash bench/gpu_train_calls.sh J           # the packed mix after 8 warm-up steps vs the padded baseline
#   bash bench/gpu_train_calls.sh K           # 2+ GPUs: 1 GPU vs 2 GPUs data-parallel (full rows, mix), then
#                                             # the train stage with training.devices=2 on a tiny-shaped model
#   DATA=.data bash bench/gpu_train_calls.sh L  # the stage with training.devices=2 again; the mix on 1 vs 2 GPUs after 14 warm-up steps
#   bash bench/gpu_train_calls.sh M   # issue 15, one call of at most ~520 s: packed kernels (flash / flex / sdpa) vs
#                                     # per-conversation SDPA; the packed mix per kernel and full rows per memory budget
#                                     # (8 / 24 / 48 GiB); Unsloth's own loop; the accumulated-step check on Unsloth;
#                                     # the train stage's wall time on 300 examples vs Unsloth's recipe and
#                                     # transformers+PEFT+TRL (each step skipped when the call's time runs out)
#   WHL=.gpu_whl bash bench/gpu_train_calls.sh N   # issue 15, throughput in one call: Unsloth's own loop (full rows, the padded mix),
#                                     # smm's Unsloth path per memory budget (8 / 12 / 24 / 48 GiB; 4-bit), the 16-bit base the
#                                     # planner loads for 48 GiB; the accumulation check; flex; transformers+PEFT's loop (BARE=0: not)
#                                     # (~440 s of work: keep CALL_S at its default 515, or the first run is starved)
#   WHL=.gpu_whl bash bench/gpu_train_calls.sh O   # issue 15, the train stage's wall time on 3,000 and 300 examples: smm's stage
#                                     # (defaults) in full; Unsloth's recipe and transformers+PEFT+TRL trained CAP_S seconds each
#                                     # (default 30), their epoch projected from the steps that ran
#   WHL=.whl bash bench/gpu_train_calls.sh M   # smm now imports jsonschema, which the GPU image lacks: carry the wheels
#                                     # of jsonschema, jsonschema-specifications, referencing and rpds-py (cp312) in WHL;
#                                     # CALL_S (default 515) is the seconds the call may take, start to last result
#   bash bench/gpu_train_calls.sh R   # issue 25: DPO: smm packed and padded vs TRL's DPO recipe with Unsloth (up to 130 s each);
#                                     # then the transformers+PEFT path with auto after the recalibration (16-bit, 25 kept planned on an H100)
#   bash bench/gpu_train_calls.sh S   # issue 25: the recalibrated transformers+PEFT plan checked: the budget auto gives on an H100
#                                     # (69.6: 16-bit, 25 layers kept) and 47 GiB with 4 bits only (8 kept), full rows and the mix
#   CALL_S=560 bash bench/gpu_train_calls.sh T   # issue 25: R's DPO comparison (5 steps each, time-boxed), S's plan check, then
#                                     # (time left) a torch.profiler table of smm's Unsloth path at 48 GiB (full rows)
#   bash bench/gpu_train_calls.sh Q   # issue 25: the transformers+PEFT path's peaks, 4-bit and 16-bit, every layer recomputed
#                                     # and none (the memory plan's calibration); DPO on the 7B shape: smm (packed, padded)
#                                     # vs TRL's DPO recipe with Unsloth; Unsloth's own loop on full rows
set -uo pipefail
START=$(date +%s); END=$((START + ${CALL_S:-515}))  # M: the call's own deadline
left() { echo $((END - $(date +%s))); }
budget() { local t=$(( $(left) - $1 )); [ "$t" -gt 20 ] && echo "$t" || echo 20; }  # seconds a step may take, keeping $1 for the rest
# M, N, O: the whole output to $OUT/log_<call>.txt, results and errors on the screen
keep() { grep -vE "it/s\]|s/it\]" | tee -a "$OUT/log_$CALL.txt" | grep -E '^\{|Packed attention|Memory plan|failed|rror' | cut -c1-900; }
CALL=${1:-A}
if [ -n "${WHL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/whl_site "$WHL"/*.whl || exit 1
  SITE=/tmp/whl_site:${SITE:-$PWD/.site}
fi
export PYTHONPATH=${SITE:-$PWD/.site}:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# No NVLink multicast (the lent multi-GPU machines require it off).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/tok
cp .bench_tok/* /tmp/tok/ && gunzip -f /tmp/tok/tokenizer.json.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/train_throughput.py make --out /tmp/m7b --tokenizer /tmp/tok
STEPS=${STEPS:-8}
ddp() { python3 -m torch.distributed.run --standalone --nproc_per_node 2 bench/train_throughput.py run --model /tmp/m7b \
          --json "$OUT/train_$1.jsonl" --steps "$STEPS" --warmup 3 "${@:2}" 2>&1 | grep -vE "it/s\]|s/it\]" | tail -25; }
run() { python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_$1.jsonl" --steps "$STEPS" --warmup 3 "${@:2}" 2>&1 | grep -vE "it/s\]|s/it\]" | tail -25; }
# The train stage with training.devices=2 on a tiny-shaped model (DATA: prepared data, else prepared here).
stage_ddp() {
  python3 bench/train_throughput.py make --tiny --out /tmp/mtiny --tokenizer /tmp/tok
  [ -n "${DATA:-}" ] || { DATA=/tmp/data; python3 run.py stage=prepare data.output_dir=$DATA hydra.run.dir=/tmp/run_prepare 2>&1 | tail -2; }
  python3 run.py stage=train model.base_model=/tmp/mtiny training.devices=2 training.max_steps=8 training.eval_steps=4 \
    training.gradient_accumulation_steps=1 training.save_steps=4 data.output_dir=$DATA training.output_dir=/tmp/adapter_ddp \
    training.checkpoint_dir=/tmp/ckpt_ddp hydra.run.dir=/tmp/run_ddp 2>&1 | grep -vE "it/s\]|s/it\]" | tail -30
  mkdir -p "$OUT/adapter_ddp" && cp /tmp/adapter_ddp/{adapter_model.safetensors,adapter_config.json,metrics.json} "$OUT/adapter_ddp/"
  ls /tmp/ckpt_ddp; grep -c "Effective batch" /tmp/run_ddp/*.log
}
case "$CALL" in
  A) run A --backend unsloth --shapes rows4096,mix_packed,mix_padded,rows1024
     run A --backend bare --shapes rows4096,rows1024,mix ;;
  B) run B --backend unsloth --shapes rows4096,mix_packed,rows4096_padded
     run B --backend unsloth --preset low_vram_8gb --shapes mix_packed,rows2048_padded
     run B --backend hf --shapes rows4096,mix_packed,mix_padded ;;
  C) stage() { python3 run.py stage=train model.base_model=/tmp/m7b "hydra.run.dir=/tmp/run_$1" \
       "training.output_dir=/tmp/adapter_$1" "training.checkpoint_dir=/tmp/ckpt_$1" "${@:2}" 2>&1 | grep -E "INFO|WARN|error" | tail -6
       python3 -c "import json,sys; m=json.load(open('/tmp/adapter_$1/metrics.json')); m.pop('loss_history'); print(json.dumps(m))" | tee -a "$OUT/stage_$1.json"; }
     stage default
     stage low_vram preset=low_vram_8gb
     python3 -c "import json; print(json.load(open('/tmp/adapter_default/adapter_config.json'))['base_model_name_or_path'])"
     run C --backend unsloth --shapes rows4096
     run C --backend hf --shapes rows4096,mix_packed,mix_padded ;;
  D) run D --backend bare --shapes rows4096,mix
     run D --backend unsloth --shapes rows4096,mix_packed,mix_padded
     run D --backend unsloth --preset low_vram_8gb --shapes mix_padded,rows2048_padded
     run D --backend hf --shapes rows4096,mix_packed,mix_padded ;;
  E) run E --backend bare_unsloth --shapes rows4096
     run E --backend unsloth --shapes rows4096,mix_packed
     run E --backend unsloth --shapes rows4096 --set training.optimizer=adamw_torch --set training.logging_steps=1000 ;;
  F) run F --backend unsloth --shapes rows4096,mix_packed --set training.optimizer=adamw_8bit
     run F --backend unsloth --shapes rows4096 --set training.logging_steps=1000
     run F --backend unsloth --shapes rows4096,mix_packed --set training.optimizer=adamw_torch ;;
  G) run G --backend bare --shapes rows4096,mix
     run G --backend bare_unsloth --shapes rows4096
     run G --backend unsloth --shapes rows4096,mix_packed,mix_padded
     run G --backend hf --shapes rows4096,mix_packed,mix_padded ;;
  H) rm -rf /tmp/torchinductor_* ~/.triton ~/.cache/triton unsloth_compiled_cache /tmp/unsloth_compiled_cache
     run H --backend unsloth --shapes rows4096 --steps 14
     run H --backend unsloth --shapes rows4096
     run H --backend unsloth --preset low_vram_8gb --shapes rows2048_padded,mix_padded ;;
  I) run I --backend bare_unsloth --shapes rows4096 --steps 14
     run I --backend unsloth --shapes rows4096,mix_packed --steps 14 ;;
  J) run J --backend unsloth --shapes mix_packed --warmup 8 --steps 12
     run J --backend bare --shapes mix --warmup 2 --steps 5 ;;
  K) run K --backend unsloth --shapes rows4096,mix_packed --warmup 8
     ddp K --backend unsloth --shapes rows4096,mix_packed --warmup 8 || {
       echo "Unsloth under DDP failed: transformers + PEFT, 1 GPU vs 2"
       run K --backend hf --shapes rows4096,mix_packed --warmup 8
       ddp K --backend hf --shapes rows4096,mix_packed --warmup 8; }
     stage_ddp ;;
  M) echo "model made at $(( $(date +%s) - START )) s"
     B8=training.memory_budget_gib=8
     timeout "$(budget 190)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_M.jsonl" --backend unsloth \
       --warmup 5 --steps 6 --shapes "mix_packed+training.attention=flash+$B8,rows4096+$B8,rows4096+training.memory_budget_gib=24,rows4096+training.memory_budget_gib=48,mix_packed+training.attention=sdpa+$B8,mix_packed+training.attention=flex+$B8" 2>&1 | keep
     echo "throughput done at $(( $(date +%s) - START )) s"
     [ "$(left)" -gt 150 ] && timeout "$(budget 120)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_M.jsonl" \
       --backend bare_unsloth --warmup 2 --steps 5 --shapes rows4096 2>&1 | keep
     python3 bench/train_throughput.py make --tiny --out /tmp/mtiny --tokenizer /tmp/tok >/dev/null 2>&1
     [ "$(left)" -gt 110 ] && timeout 50 python3 bench/train_throughput.py accumulation --model /tmp/mtiny --tiny --backend unsloth \
       --json "$OUT/acc_M.jsonl" 2>&1 | keep
     [ "$(left)" -gt 120 ] && timeout 45 python3 bench/train_throughput.py kernels --repeats 5 --json "$OUT/kernels_M.jsonl" 2>&1 | keep
     echo "e2e starts at $(( $(date +%s) - START )) s"
     python3 bench/train_throughput.py e2e --model /tmp/m7b --tokenizer /tmp/tok --examples 300 --budget-s "$(budget 8)" \
       --set training.memory_budget_gib=auto --json "$OUT/e2e_M.jsonl" 2>&1 | keep ;;
  N) echo "model made at $(( $(date +%s) - START )) s"
     timeout "$(budget 380)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_N.jsonl" --backend bare_unsloth \
       --warmup 2 --steps 5 --shapes rows4096,mix 2>&1 | keep
     B=training.memory_budget_gib  # loaded in 4 bits under an 8 GiB budget; each shape's budget then plans its layers
     timeout "$(budget 170)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_N.jsonl" --backend unsloth --warmup 4 --steps 6 \
       --set $B=8 --shapes "rows4096+$B=8,mix_packed+$B=8,rows4096+$B=12,mix_packed+$B=12,rows4096+$B=24,mix_packed+$B=24,rows4096+$B=48,mix_packed+$B=48" 2>&1 | keep
     echo "4-bit budgets done at $(( $(date +%s) - START )) s"
     timeout "$(budget 110)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_N.jsonl" --backend unsloth --warmup 4 --steps 6 \
       --set $B=48 --shapes "rows4096,mix_packed" 2>&1 | keep  # the plan loads the base in 16 bits
     echo "16-bit done at $(( $(date +%s) - START )) s"
     python3 bench/train_throughput.py make --tiny --out /tmp/mtiny --tokenizer /tmp/tok >/dev/null 2>&1
     [ "$(left)" -gt 60 ] && timeout 50 python3 bench/train_throughput.py accumulation --model /tmp/mtiny --tiny --backend unsloth \
       --json "$OUT/acc_N.jsonl" 2>&1 | keep
     [ "$(left)" -gt 50 ] && timeout "$(budget 5)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_N.jsonl" \
       --backend unsloth --warmup 4 --steps 4 --set $B=8 --shapes "mix_packed+training.attention=flex+$B=8" 2>&1 | keep
     [ "${BARE:-1}" = 1 ] && [ "$(left)" -gt 80 ] && timeout "$(budget 5)" python3 bench/train_throughput.py run --model /tmp/m7b \
       --json "$OUT/train_N.jsonl" --backend bare --warmup 2 --steps 3 --shapes rows4096,mix 2>&1 | keep ;;
  O) echo "model made at $(( $(date +%s) - START )) s"
     python3 bench/train_throughput.py e2e --model /tmp/m7b --tokenizer /tmp/tok --examples 3000 --recipes smm,unsloth,hf \
       --cap-s "${CAP_S:-30}" --budget-s $(( $(left) * 63 / 100 )) --json "$OUT/e2e_O.jsonl" 2>&1 | keep
     python3 bench/train_throughput.py e2e --model /tmp/m7b --tokenizer /tmp/tok --examples 300 --recipes smm,unsloth,hf \
       --cap-s "${CAP_S:-30}" --budget-s $(( $(left) - 5 )) --json "$OUT/e2e_O.jsonl" 2>&1 | keep ;;
  Q) echo "model made at $(( $(date +%s) - START )) s"
     B=training.memory_budget_gib  # 11.3 (4-bit) and 20.1 (16-bit): every layer recomputed; 200: none
     timeout "$(budget 310)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_Q.jsonl" --backend hf --warmup 2 --steps 3 \
       --set $B=11.3 --set training.budget_allows_16bit=false --shapes "rows4096+$B=11.3,mix_packed+$B=11.3,rows4096+$B=200,mix_packed+$B=200" 2>&1 | keep
     echo "hf 4-bit done at $(( $(date +%s) - START )) s"
     timeout "$(budget 235)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_Q.jsonl" --backend hf --warmup 2 --steps 3 \
       --set $B=auto --shapes "rows4096+$B=20.1,mix_packed+$B=20.1,rows4096+$B=200,mix_packed+$B=200" 2>&1 | keep
     echo "hf 16-bit done at $(( $(date +%s) - START )) s"
     for r in "smm" "smm --set training.dpo.packing=false" "unsloth"; do
       timeout 75 python3 bench/train_throughput.py dpo --model /tmp/m7b --json "$OUT/dpo_Q.jsonl" --warmup 3 --steps 8 --recipe $r 2>&1 | keep
     done
     echo "dpo done at $(( $(date +%s) - START )) s"
     [ "$(left)" -gt 45 ] && timeout "$(budget 3)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_Q.jsonl" \
       --backend bare_unsloth --warmup 2 --steps 5 --shapes rows4096 2>&1 | keep ;;
  R) echo "model made at $(( $(date +%s) - START )) s"
     for r in "smm" "unsloth" "smm --set training.dpo.packing=false"; do
       timeout "$(( $(left) / 3 > 130 ? 130 : $(left) / 3 ))" python3 bench/train_throughput.py dpo --model /tmp/m7b --json "$OUT/dpo_R.jsonl" \
         --warmup 2 --steps 6 --recipe $r 2>&1 | keep
       echo "dpo $r done at $(( $(date +%s) - START )) s"
     done
     [ "$(left)" -gt 40 ] && timeout "$(budget 2)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_R.jsonl" \
       --backend hf --warmup 2 --steps 3 --set training.memory_budget_gib=auto --shapes "rows4096,mix_packed" 2>&1 | keep ;;
  S) echo "model made at $(( $(date +%s) - START )) s"
     B=training.memory_budget_gib  # 69.6 = auto on an H100 (16-bit, 25 kept); 47 with 4 bits only (8 kept)
     timeout "$(budget 60)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_S.jsonl" --backend hf --warmup 2 --steps 3 \
       --shapes "rows4096+$B=69.6,mix_packed+$B=69.6" 2>&1 | keep
     timeout "$(budget 2)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/train_S.jsonl" --backend hf --warmup 2 --steps 3 \
       --set training.budget_allows_16bit=false --shapes "rows4096+$B=47,mix_packed+$B=47" 2>&1 | keep ;;
  T) echo "model made at $(( $(date +%s) - START )) s"   # in order of need, each step only with time left
     dpo_T() { [ "$(left)" -gt $(( $1 + 20 )) ] && timeout "$1" python3 bench/train_throughput.py dpo --model /tmp/m7b \
                 --json "$OUT/dpo_T.jsonl" --warmup 2 --steps 5 --recipe "${@:2}" 2>&1 | keep; echo "dpo ${*:2} done at $(( $(date +%s) - START )) s"; }
     plan_T() { [ "$(left)" -gt 60 ] && timeout "$(( $(left) < 100 ? $(left) - 5 : 95 ))" python3 bench/train_throughput.py run --model /tmp/m7b \
                 --json "$OUT/train_T.jsonl" --backend hf --warmup 2 --steps 3 "$@" 2>&1 | keep; }
     B=training.memory_budget_gib
     dpo_T 110 smm
     dpo_T 120 unsloth
     plan_T --shapes "rows4096+$B=69.6,mix_packed+$B=69.6"
     plan_T --set training.budget_allows_16bit=false --shapes "rows4096+$B=47,mix_packed+$B=47"
     dpo_T 100 smm --set training.dpo.packing=false
     [ "$(left)" -gt 70 ] && timeout "$(budget 2)" python3 bench/train_throughput.py run --model /tmp/m7b --json "$OUT/profile_T.jsonl" \
       --backend unsloth --warmup 2 --steps 3 --profile "$OUT" --shapes "rows4096+$B=48" 2>&1 | keep ;;
  L) stage_ddp
     run L --backend unsloth --shapes mix_packed --warmup 14 --steps 12
     ddp L --backend unsloth --shapes mix_packed --warmup 14 --steps 12 ;;
esac
python3 bench/train_throughput.py table "$OUT"/*.jsonl
