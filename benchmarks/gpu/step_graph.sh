#!/usr/bin/env bash
# The whole training step in one CUDA graph (module.cuda_graph, issue 2), on a GPU:
# (1) tests/test_step_graph.py, whose GPU tests capture real graphs (replays = eager steps, fresh seeded
#     noise per replay, Lightning training with a real graph learns like eager training);
# (2) training throughput at Cohen's batch size 256, reference and ours (eager steps / one graph per step,
#     each also with torch.compile) in one run.
#   OUT=$OUT bash benchmarks/gpu/step_graph.sh        # after the prelude from ../shared/device/prepare.sh
set -u
dir="$OUT/step_graph"
mkdir -p "$dir"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$dir/gpu.txt" 2>&1
python3 -m pytest -q -p no:cacheprovider tests/test_step_graph.py 2>&1 | tail -15 | tee "$dir/pytest.txt"
python3 benchmarks/train_throughput.py --device cuda --models resnet110,lenet --batch-size "${BATCH:-256}" \
    --cuda-graph false,auto ${COMPILE:+--compile "$COMPILE"} --out "$dir/train_throughput.json" 2>&1 \
    | grep -v Warning | tail -25 | tee "$dir/train_throughput.txt"
