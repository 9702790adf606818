#!/usr/bin/env bash
# Accelerator checks of a CUDA machine in one prepared run: the tests under tests/gpu (each
# capability on the GPU against the same computation on the CPU) and the CUDA branches of the
# other tests, then the speed benchmarks on the GPU at their reference sizes. Every step has a
# time limit inside an overall deadline, so a slow or hanging step cannot use up the machine.
#
# Usage: bash benchmarks/gpu_check.sh [OUTDIR]     (default: bench-results/gpu)
#   GPU_CHECK_SECONDS  overall deadline in seconds (default 480)
#   GPU_CHECK_STEPS    space-separated subset of the steps to run (default: all, in order)
#   PYTHON             interpreter (default python3); probrec is imported from this checkout
# Output: OUTDIR/<step>.log and the benchmarks' JSON, packed into OUTDIR.tgz at the end.
set -u
out_dir=${1:-bench-results/gpu}
mkdir -p "$out_dir"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
deadline=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-480} ))
steps=${GPU_CHECK_STEPS:-"env tests adkf_ift_step inner_loop recsys_throughput annotator_flows mala_vs_blackjax samplers"}

run_step() {  # run_step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2 left start rc
  shift 2
  case " $steps " in *" $name "*) ;; *) return 0 ;; esac
  left=$(( deadline - $(date +%s) - 5 ))
  if (( left < 10 )); then echo "=== $name skipped: deadline reached"; return 0; fi
  (( limit > left )) && limit=$left
  echo "=== $name (limit ${limit} s)"
  start=$(date +%s)
  timeout "$limit" "$@" >"$out_dir/$name.log" 2>&1
  rc=$?
  echo "=== $name rc=$rc in $(( $(date +%s) - start )) s"
  tail -n 12 "$out_dir/$name.log"
}

bench="--device cuda --repeats 3 --warmup 1 --data none"
run_step env 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
  $py -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name())'; \
  $py -m probrec.cli info"
run_step tests 200 "$py" -m pytest tests/gpu \
  "tests/probrec/flows/test_contract.py::test_dtype_and_device_follow_the_model" \
  "tests/probrec/backbone/test_store.py::test_lookup_device_and_dtype" \
  -q -rfEsxX --timeout 120 -p no:cacheprovider
run_step adkf_ift_step 45 "$py" benchmarks/adkf_ift_step.py $bench --no-rss \
  --out "$out_dir/adkf_ift_step.json"
run_step inner_loop 40 "$py" benchmarks/inner_loop.py $bench --out "$out_dir/inner_loop.json"
run_step recsys_throughput 30 "$py" benchmarks/recsys_throughput.py $bench \
  --out "$out_dir/recsys_throughput.json"
run_step annotator_flows 90 "$py" benchmarks/annotator_flows.py --device cuda --repeats 3 \
  --out "$out_dir/annotator_flows.json"
run_step mala_vs_blackjax 75 "$py" benchmarks/mala_vs_blackjax.py --device cuda --repeats 3 \
  --out "$out_dir/mala_vs_blackjax.json"
run_step samplers 90 "$py" -m probrec.cli bench samplers --device cuda --targets mog40 \
  --samplers digs,pt,mala,hmc --budgets 1000 --seeds 0 --no-plots --no-progress \
  --out "$out_dir/samplers"
tar czf "$out_dir.tgz" -C "$(dirname "$out_dir")" "$(basename "$out_dir")"
echo "packed $out_dir.tgz"
