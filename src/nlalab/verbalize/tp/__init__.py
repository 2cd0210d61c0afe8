"""Tensor-parallel generation (``engine="tp"``): one process per device, Megatron-style shards.

Why: a 70B AV does not fit one GPU; layer sharding (accelerate hooks) runs the GPUs one after another, and
the fast engine needs one device. Here every GPU holds a slice of *every* layer and all of them work on
every token: q/k/v and gate/up column-parallel, o/down row-parallel + all-reduce, embedding and LM head
vocabulary-parallel (logits all-gathered, so every rank samples the same token with the one-process
counter-based sampler: rows do not depend on the device count beyond rounding; in fp32 on the CPU they
are the ``loop`` engine's rows, tests/unit/test_tp_gloo.py).

Layout: ``shard`` (which slice of each weight a rank holds; refuses head counts that do not split),
``compute`` (the sharded decoder: prefill over the shared prompt prefix, decode, block-K hidden states),
``group`` (``torch.distributed`` group: spawned by nlalab with ``torch.multiprocessing``, or torchrun's),
``backend`` (the registry's rows and plain-rows functions, devices, ``tp_run_to_block`` /
``tp_forward_group`` for the capture and AR forwards).
Launch: ``GenerationSettings(engine="tp", devices=2)`` (``nlalab run --engine tp --verbalize-devices 2``)
starts ranks 1..N-1 itself; under ``torchrun --nproc-per-node N`` every rank runs the program and the
group is torchrun's. Design notes and what is measured: docs/performance.md, "Tensor parallelism".
"""

from nlalab.verbalize.tp.backend import (  # noqa: F401
    tp_devices, tp_forward_group, tp_plain_rows, tp_rows, tp_run_to_block)
from nlalab.verbalize.tp.group import TPGroup, current, group_for, release, shutdown, torchrun_env  # noqa: F401
from nlalab.verbalize.tp.shard import (  # noqa: F401
    TPConfig, TPLayer, TPWeights, check_world, has_head, rope_tables, shard_weights, unsupported_reason)
