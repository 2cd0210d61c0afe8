"""The tensor-parallel process group: one process per device, ``torch.distributed`` collectives.

Two ways in, detected here:
- **nlalab launches it** (``TPGroup.spawn``): this process is rank 0 on the first device; ranks 1..N-1 are
  processes started with ``torch.multiprocessing`` (spawn) that wait for commands (``broadcast_object_list``
  from rank 0) and run the same SPMD code (``compute``) on their shards. Weights travel once per model
  through a ``torch.multiprocessing`` queue: a CUDA tensor already on the rank's GPU goes as an IPC handle
  (no copy: the rank slices the model's own memory), anything else is copied to the rank's device first;
  CPU tensors go through shared memory. The group stays up for the process (one study, many calls) and is
  stopped at exit or by ``shutdown()``.
- **torchrun** (``WORLD_SIZE``/``RANK`` in the environment, or a default process group already
  initialised): every rank runs the user's program, loads the pair itself and calls ``verbalize`` with the
  same arguments; each rank slices its own shard locally and every rank returns the same records.
Backend: NCCL when the devices are GPUs, gloo on the CPU (tests).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import socket
import sys
import traceback
import weakref
from typing import Optional

import torch

from nlalab.errors import NLALabError, UsageError
from nlalab.verbalize.tp import compute
from nlalab.verbalize.tp.shard import TPWeights, rope_tables, shard_weights

TIMEOUT_S = float(os.environ.get("NLALAB_TP_TIMEOUT", "900"))
ROPE_MIN = 1024


def torchrun_env() -> bool:
    """True inside torchrun (or any launcher that set WORLD_SIZE > 1) or an initialised default group."""
    import torch.distributed as dist

    g = _GROUP[0]
    if g is not None and g.spawned and not g.closed:  # the default group is the one nlalab started
        return False
    if dist.is_available() and dist.is_initialized():
        return True
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backend(dev: torch.device) -> str:
    return "nccl" if dev.type == "cuda" else "gloo"


def _bcast(obj, dev: torch.device):
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, device=dev if dev.type == "cuda" else None)
    return box[0]


class _Model:
    """One model's shard on this rank, its RoPE tables and the prefix K/V of the last prompt."""

    def __init__(self, W: TPWeights, rope: Optional[compute.Rope]):
        self.W, self.rope = W, rope
        self.prefix_key = None
        self.kp, self.vp = [], []

    def prefix(self, comm, prompt_ids, P):
        key = (tuple(prompt_ids[:P]), self.rope.length)
        if key != self.prefix_key:
            self.kp, self.vp = compute.prefix_kv(self.W, comm, self.rope, list(prompt_ids[:P]))
            self.prefix_key = key
        return self.kp, self.vp


def _run(models: dict, comm, cmd: dict, device: torch.device):
    """Execute one command on this rank (every rank runs the same)."""
    op = cmd["op"]
    m = models.get(cmd.get("key"))
    if op == "rope":
        m.rope = compute.Rope(cmd["cos"], cmd["sin"], cmd["index"]).to(device)
        m.prefix_key = None
        return None
    if op == "generate":
        with torch.inference_mode():
            kp, vp = m.prefix(comm, cmd["prompt_ids"], cmd["marker_pos"])
            return compute.generate(m.W, comm, m.rope, cmd["prompt_ids"], cmd["marker_pos"], kp, vp,
                                    cmd["vectors"], cmd["keys"], **cmd["sampling"])
    if op == "plain":
        with torch.inference_mode():
            P = len(cmd["prefix"])
            kp, vp = m.prefix(comm, cmd["prefix"], P)
            return compute.generate_plain(m.W, comm, m.rope, P, kp, vp, cmd["suffixes"], cmd["keys"],
                                          **cmd["sampling"])
    if op == "hidden":
        with torch.inference_mode():
            ids = cmd["input_ids"].to(device)
            mask = cmd["mask"].to(device)
            x = compute.embed(m.W, comm, ids)
            pos = torch.arange(ids.shape[1], device=device)[None].expand(ids.shape[0], -1)
            h = compute.hidden(m.W, comm, m.rope, x, mask, pos, cmd["n_blocks"])
            sel = cmd.get("select")
            if sel is not None:  # only the (row, position) pairs the caller reads travel back
                sel = sel.to(device)
                h = h[sel[:, 0], sel[:, 1]]
            return h.cpu()
    if op == "drop":
        models.pop(cmd["key"], None)
        return None
    if op == "load":  # rank 0 builds its own shard (TPGroup.key_of); the others read theirs from the queue
        return None
    raise NLALabError(f"tensor-parallel group: unknown command {op!r}")


def _follower(rank: int, world: int, init: str, device: str, queue) -> None:
    """Ranks 1..N-1 of a group nlalab launched: join, then run rank 0's commands until told to stop."""
    import torch.distributed as dist

    dev = torch.device(device)
    try:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        else:
            torch.set_num_threads(int(os.environ.get("NLALAB_TP_CPU_THREADS", "1")))
        dist.init_process_group(_backend(dev), init_method=init, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
        comm = compute.Comm(world)
        models: dict = {}
        while True:
            cmd = _bcast(None, dev)
            if cmd["op"] == "stop":
                break
            if cmd["op"] == "load":
                cfg, dtype, tensors = queue.get()
                models[cmd["key"]] = _Model(TPWeights.from_tensors(cfg, rank, dtype, tensors).to(dev), None)
                del tensors
                continue
            _run(models, comm, cmd, dev)
        dist.destroy_process_group()
    except BaseException:  # the other ranks see the collective fail (gloo) or time out (NCCL)
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)


@contextlib.contextmanager
def _main_not_reimported():
    """Start ranks without re-importing the caller's main script in them (spawn would, and a script without
    an ``if __name__ == "__main__"`` guard would then run again in every rank): ranks run nlalab code only."""
    main = sys.modules.get("__main__")
    saved = {a: main.__dict__[a] for a in ("__file__", "__spec__") if main is not None and a in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        if "__spec__" in saved:
            main.__dict__["__spec__"] = None
        yield
    finally:
        for a, v in saved.items():
            main.__dict__[a] = v


class TPGroup:
    """This process's place in a tensor-parallel group, and the shards it holds (keyed by model)."""

    def __init__(self, devices: list, rank: int, spawned: bool, procs=(), queues=()):
        self.devices = devices
        self.world = len(devices)
        self.rank = rank
        self.device = devices[rank]
        self.spawned = spawned
        self.procs = list(procs)
        self.queues = list(queues)
        self.comm = compute.Comm(self.world)
        self.models: dict = {}  # key -> _Model (this rank)
        self._keys: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
        self._keep: dict = {}  # key -> tensors handed to other ranks by IPC (must outlive their use)
        self._next = 0
        self.closed = False

    # ------------------------------------------------------------------------------ start / stop

    @classmethod
    def spawn(cls, devices: list) -> "TPGroup":
        import torch.distributed as dist
        import torch.multiprocessing as mp

        devices = [torch.device(d) for d in devices]
        types = {d.type for d in devices}
        if len(types) != 1:
            raise UsageError(f"tensor parallel: devices must be all CPU or all CUDA, got {devices}.")
        if types == {"cuda"} and len(set(devices)) != len(devices):
            raise UsageError("tensor parallel: list each GPU once (one process per GPU).")
        init = f"tcp://127.0.0.1:{_free_port()}"
        ctx = mp.get_context("spawn")
        procs, queues = [], []
        with _main_not_reimported():
            for r in range(1, len(devices)):
                q = ctx.Queue()
                p = ctx.Process(target=_follower, args=(r, len(devices), init, str(devices[r]), q), daemon=True,
                                name=f"nlalab-tp-rank{r}")
                p.start()
                procs.append(p)
                queues.append(q)
        if devices[0].type == "cuda":
            torch.cuda.set_device(devices[0])
        try:
            dist.init_process_group(_backend(devices[0]), init_method=init, rank=0, world_size=len(devices),
                                    timeout=datetime.timedelta(seconds=TIMEOUT_S))
        except BaseException:
            for p in procs:
                p.kill()
            raise
        g = cls(devices, 0, True, procs, queues)
        atexit.register(g.shutdown)
        return g

    @classmethod
    def join_torchrun(cls) -> "TPGroup":
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0") or 0)
        use_cuda = torch.cuda.is_available() and os.environ.get("NLALAB_TP_DEVICE", "") != "cpu"
        dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(_backend(dev), timeout=datetime.timedelta(seconds=TIMEOUT_S))
        world, rank = dist.get_world_size(), dist.get_rank()
        devs = [dev if r == rank else torch.device(dev.type, r) if use_cuda else dev for r in range(world)]
        return cls(devs, rank, False)

    def alive(self) -> bool:
        return not self.closed and all(p.is_alive() for p in self.procs)

    def shutdown(self) -> None:
        """Stop the ranks nlalab started and leave the process group (idempotent)."""
        if self.closed:
            return
        self.closed = True
        import torch.distributed as dist

        if self.spawned:
            if all(p.is_alive() for p in self.procs):
                try:
                    _bcast({"op": "stop"}, self.device)
                except Exception:  # pragma: no cover - a rank died
                    pass
            for p in self.procs:
                p.join(timeout=30)
                if p.is_alive():  # pragma: no cover
                    p.kill()
            if dist.is_initialized():
                dist.destroy_process_group()
        self.models.clear()
        self._keep.clear()

    # ------------------------------------------------------------------------------ commands

    def _command(self, cmd: dict):
        """Rank 0 of a spawned group: send ``cmd`` to the other ranks and run it here too."""
        if self.spawned:
            dead = [p.name for p in self.procs if not p.is_alive()]
            if dead or self.closed:
                self.shutdown()
                raise NLALabError(f"tensor-parallel group: rank process(es) {', '.join(dead) or '?'} stopped; "
                                  "see their error above. The group was shut down; the next call starts a new one.")
            _bcast(cmd, self.device)
        try:
            return _run(self.models, self.comm, cmd, self.device)
        except Exception as e:
            if self.spawned and not self.alive():
                self.shutdown()
                raise NLALabError(f"tensor-parallel group: a rank process failed ({type(e).__name__}: {e}); "
                                  "see its error above.") from e
            raise

    def key_of(self, model) -> int:
        """Load ``model``'s shards on every rank (once per model), return its key."""
        k = self._keys.get(model)
        if k is not None and k in self.models:
            return k
        k = self._next
        self._next += 1
        if self.spawned:
            keep, outs = [], []
            for r in range(1, self.world):
                W = shard_weights(model, r, self.world)
                dev = self.devices[r]
                out = {}
                for name, t in W.tensors().items():
                    if t is None:
                        out[name] = None
                    elif dev.type == "cuda":  # by IPC handle: a view when already on that GPU, else a copy there
                        out[name] = t if t.device == dev else t.to(dev).contiguous()
                        keep.append(out[name])
                    else:  # shared memory: a fresh copy, so the model's own storage is not moved
                        out[name] = t.detach().contiguous().clone()
                outs.append((W.cfg, W.dtype, out))
            self._command({"op": "load", "key": k})  # every other rank now reads its own queue
            for q, item in zip(self.queues, outs):
                q.put(item)
            del outs
            self._keep[k] = keep
        W0 = shard_weights(model, self.rank, self.world).to(self.device)
        self.models[k] = _Model(W0, None)
        self._keys[model] = k
        self._ensure_rope(k, model, ROPE_MIN)
        return k

    def _ensure_rope(self, k: int, model, length: int) -> None:
        m = self.models[k]
        if m.rope is not None and m.rope.length >= length:
            return
        n = max(ROPE_MIN, int(length))
        cos, sin, index = rope_tables(model, n)
        if self.spawned:
            self._command({"op": "rope", "key": k, "cos": cos, "sin": sin, "index": index})
        else:
            _run(self.models, self.comm, {"op": "rope", "key": k, "cos": cos, "sin": sin, "index": index},
                 self.device)

    def generate(self, model, prompt_ids, marker_pos: int, vectors: torch.Tensor, keys: torch.Tensor,
                 sampling: dict):
        k = self.key_of(model)
        self._ensure_rope(k, model, len(prompt_ids) + int(sampling["max_new_tokens"]) + 16)
        cmd = {"op": "generate", "key": k, "prompt_ids": [int(i) for i in prompt_ids],
               "marker_pos": int(marker_pos), "vectors": vectors.detach().float().cpu(), "keys": keys.cpu(),
               "sampling": sampling}
        toks, done = self._command(cmd)
        return toks.cpu(), done.cpu()

    def plain(self, model, prefix, suffixes, keys: torch.Tensor, sampling: dict):
        """Plain-mode rows ``prefix + suffixes[i]`` (no injection): tokens and finished flags on the CPU."""
        k = self.key_of(model)
        longest = len(prefix) + max(len(s) for s in suffixes)
        self._ensure_rope(k, model, longest + int(sampling["max_new_tokens"]) + 16)
        toks, done = self._command({"op": "plain", "key": k, "prefix": [int(i) for i in prefix],
                                    "suffixes": [[int(i) for i in s] for s in suffixes], "keys": keys.cpu(),
                                    "sampling": sampling})
        return toks.cpu(), done.cpu()

    def _shared_trunk(self, model, n_blocks: int) -> Optional[int]:
        """The key of a loaded model whose embedding and first ``n_blocks`` blocks are ``model``'s own
        Parameters (a truncated view such as bench_study's AR over its target): its shard serves the block
        forward, so the same weights are not sliced and sent twice. Only live models are compared (their
        Parameters hold the addresses)."""
        sig = _trunk_sig(model, n_blocks)
        for other, k in list(self._keys.items()):
            if other is not model and k in self.models and _trunk_sig(other, n_blocks) == sig:
                return k
        return None

    def hidden(self, model, input_ids: torch.Tensor, mask: torch.Tensor, n_blocks: int,
               select: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Block ``n_blocks - 1``'s output [B, T, d], or only the rows ``select`` [N, 2] (row, position)
        names ([N, d]), on the CPU."""
        k = self._keys.get(model)
        if k is None or k not in self.models:
            k = self._shared_trunk(model, n_blocks)
        if k is None:
            k = self.key_of(model)
        self._ensure_rope(k, model, input_ids.shape[1] + 16)
        return self._command({"op": "hidden", "key": k, "input_ids": input_ids.cpu(), "mask": mask.cpu(),
                              "n_blocks": int(n_blocks), "select": None if select is None else select.cpu()})

    def drop(self, model) -> None:
        k = self._keys.pop(model, None)
        if k is None or self.closed:
            return
        self._command({"op": "drop", "key": k})
        self._keep.pop(k, None)


def _trunk_sig(model, n_blocks: int) -> Optional[tuple]:
    """Where ``model``'s embedding and first ``n_blocks`` blocks' weights live (None if it has fewer)."""
    from nlalab.pairs import arch

    layers = arch.decoder_layers(model)
    if len(layers) < n_blocks:
        return None
    ws = [model.get_input_embeddings().weight] + [p for lay in layers[:n_blocks] for p in lay.parameters()]
    return tuple((w.device, w.data_ptr(), tuple(w.shape)) for w in ws)


_GROUP: list = [None]


def group_for(devices: Optional[list]) -> TPGroup:
    """The process's group: torchrun's, or one nlalab spawns on ``devices`` (restarted if they differ)."""
    g = _GROUP[0]
    if torchrun_env():
        if g is None or g.spawned:
            g = _GROUP[0] = TPGroup.join_torchrun()
        return g
    devices = [torch.device(d) for d in devices]
    if g is not None and (g.closed or g.devices != devices or not g.alive()):
        g.shutdown()
        g = None
    if g is None:
        g = _GROUP[0] = TPGroup.spawn(devices)
    return g


def current() -> Optional[TPGroup]:
    g = _GROUP[0]
    return None if g is None or g.closed else g


def shutdown() -> None:
    """Stop the group nlalab started (tests, or to give the devices back); a later call starts a new one."""
    g = _GROUP[0]
    if g is not None:
        g.shutdown()
    _GROUP[0] = None


def release(model) -> None:
    """Drop ``model``'s shards on every rank (``nlalab.pairs.load.release`` calls it)."""
    g = current()
    if g is not None:
        g.drop(model)
