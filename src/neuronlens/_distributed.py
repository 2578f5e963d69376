"""Data-parallel audits: the probe prompts are sharded over ranks, the sums all-reduced.

``torchrun --nproc_per_node=N -m neuronlens audit ...`` (or ``accelerate launch``) starts N
processes with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set.
:func:`launch_from_env` sees WORLD_SIZE > 1 and joins the process group (gloo on CPU, nccl when
the models run on CUDA, one GPU per local rank). Each rank then:

- keeps prompt i of every probe set when i % world_size == rank (every rank sees every probe set;
  prompt indices stay those of the full set, so reports and evidence name the right prompt),
  generates the base and fine-tuned responses for its prompts only (cached per shard), and runs
  both models on them; the 'own' read pairs each prompt's fine-tuned mean with its base mean on
  the rank that holds both;
- all-reduces the float64 sums (:meth:`DataParallel.all_reduce_sums`: keys are reconciled first,
  so a rank whose shard of a set measured nothing still contributes zeros) and all-gathers the
  token-level evidence (sparse codes), so every rank builds the same full report; only rank 0
  writes files, prints and exits with the verdict's code (the others exit 0 after it has written).

Because every statistic is a sum, the all-reduced sums are those of one process reading the same
batches, up to float64 summation order. Batches are formed per rank, so - as with another
`token_budget` - padding, float32 rounding of the forward passes and the per-batch
massive-activation median can differ from a single-process run.

Failure: a rank that raises exits non-zero; torchrun (and accelerate, which uses it) then stops the
other ranks and exits 1 naming the failed rank. Without such a launcher, the survivors' next
collective fails - a :class:`~neuronlens.errors.DistributedError`, exit 2 - when the peer's
connection drops (gloo) or after `NEURONLENS_DIST_TIMEOUT` minutes (default 30; with nccl,
PyTorch's watchdog ends the process instead). The timeout also bounds the other ranks' wait while
rank 0 builds SAEs or concept associations that are not cached yet: pre-build them (one
single-process audit) when that takes longer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from .errors import ConfigError, DistributedError
from .risk import EvidenceStore
from .stats import AuditSums

T = TypeVar("T")
F64 = torch.float64
TIMEOUT_ENV = "NEURONLENS_DIST_TIMEOUT"
"""Minutes a rank waits for the others (rendezvous and every collective); default 30."""
DEFAULT_TIMEOUT_MIN = 30.0
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel audit and the collectives the audit needs."""

    rank: int
    world_size: int
    local_rank: int = 0
    device: str = "cpu"
    """Where collective buffers live: 'cpu' (gloo) or this rank's 'cuda:N' (nccl)."""
    owns_group: bool = False
    """Whether :func:`launch_from_env` initialised the process group (and :meth:`close` ends it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def spec(self) -> tuple[int, int]:
        """(rank, world_size): which prompts are this rank's (index % world_size == rank)."""
        return self.rank, self.world_size

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every world_size-th, starting at its rank."""
        return list(items)[self.rank :: self.world_size]

    def model_device(self, device: str) -> str:
        """The device this rank's models use for a requested `device`: 'auto' and 'cuda' mean this
        rank's GPU (cuda:LOCAL_RANK) when the audit runs on CUDA."""
        return self.device if self.device.startswith("cuda") and device in ("auto", "cuda") else device

    # -- collectives -------------------------------------------------------------------------
    def all_gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank (picklable), in rank order."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        with self._collective("exchanging data"):
            dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        with self._collective("waiting for the other ranks"):
            if self.device.startswith("cuda"):
                dist.barrier(device_ids=[torch.device(self.device).index or 0])
            else:
                dist.barrier()

    def all_reduce_sums(self, sums: AuditSums) -> AuditSums:
        """The sum over ranks of every tensor of `sums` (a new object, the same on every rank).
        The key sets are exchanged first: a key some rank lacks (its shard of a probe set measured
        no token at that layer) enters that rank's sum as zeros."""
        import torch.distributed as dist

        flat = sums.to_flat()
        layout = union_layout(self.all_gather(flat_layout(flat)))
        buf = pack_flat(flat, layout).to(self.device)
        with self._collective("summing the statistics"):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return AuditSums.from_flat(unpack_flat(buf.cpu(), layout))

    def gather_evidence(self, evidence: EvidenceStore) -> EvidenceStore:
        """Every rank's token-level evidence, merged (the same on every rank)."""
        return merge_evidence(evidence.prompts, self.all_gather(evidence.records))

    def check_same(self, what: str, value: Any) -> None:
        """Raise :class:`DistributedError` on every rank unless every rank holds the same `value`
        (a JSON-able summary of its inputs): ranks reading different models, SAEs, probes or
        settings would add up statistics of different audits."""
        values = self.all_gather(value)
        bad = [r for r, v in enumerate(values) if v != values[0]]
        if bad:
            diff = sorted(k for k in values[0] if values[bad[0]].get(k) != values[0].get(k)) if isinstance(value, dict) else []
            raise DistributedError(
                f"Rank(s) {bad} of this data-parallel audit do not have the same {what} as rank 0"
                + (f" (differing: {', '.join(map(str, diff))})." if diff else "."),
                "Start every rank with the same command, files and cache (SAEs, concept associations); "
                "on several machines, share or pre-fill the NeuronLens cache.",
            )

    @contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """Turn a collective's failure (a rank died, or did not arrive within the timeout) into a
        :class:`DistributedError` naming this rank and what to look at."""
        try:
            yield
        except DistributedError:
            raise
        except Exception as exc:  # noqa: BLE001 - gloo/nccl raise RuntimeError or DistBackendError subclasses
            raise DistributedError(
                f"Rank {self.rank} of the data-parallel audit ({self.world_size} ranks) failed while {what}: another rank "
                f"stopped or did not arrive within {timeout_minutes():g} min ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}).",
                f"Look for the first error in the other ranks' output; raise {TIMEOUT_ENV} (minutes) if a rank is only slow.",
            ) from exc

    def close(self) -> None:
        """End the process group if this object started it."""
        import torch.distributed as dist

        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def launch_from_env(device: str = "auto") -> DataParallel | None:
    """The data-parallel context of this process: None for a single-process run (WORLD_SIZE unset
    or 1); otherwise join (or reuse) the torch.distributed process group that torchrun or
    accelerate describe in the environment. `device` is the models' requested device: CUDA (nccl,
    one GPU per LOCAL_RANK) when it is 'auto' or 'cuda' and CUDA is available, else CPU (gloo)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        if world <= 1:
            return None
        on_cuda = "nccl" in str(dist.get_backend()) and torch.cuda.is_available()
        local = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device() if on_cuda else 0))
        return DataParallel(dist.get_rank(), world, local, f"cuda:{local}" if on_cuda else "cpu", owns_group=False)
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number.", "Launch with torchrun or accelerate launch.") from exc
    if world <= 1:
        return None
    missing = [v for v in _LAUNCH_VARS if not os.environ.get(v)]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not.",
            "Launch with `torchrun --nproc_per_node=N -m neuronlens audit ...` or `accelerate launch -m neuronlens audit ...`, "
            "or unset WORLD_SIZE for a single-process audit.",
        )
    if not dist.is_available():
        raise DistributedError("This PyTorch build has no torch.distributed.", "Install a PyTorch build with distributed support.")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda:"):
        raise ConfigError(
            f"--device {device} would put every rank of the data-parallel audit on the same GPU.",
            "Use --device cuda (or auto): each rank uses GPU LOCAL_RANK.",
        )
    on_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if on_cuda:
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s).",
                "Start at most one rank per GPU (--nproc_per_node), or run every rank on CPU with --device cpu (gloo).",
            )
        torch.cuda.set_device(local)
    minutes = timeout_minutes()
    try:
        dist.init_process_group("nccl" if on_cuda else "gloo", timeout=timedelta(minutes=minutes), rank=rank, world_size=world)
    except Exception as exc:  # noqa: BLE001 - rendezvous errors come in many types; all mean "could not start"
        raise DistributedError(
            f"Rank {rank} could not join the data-parallel audit ({world} ranks, {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}) "
            f"within {minutes:g} min: {type(exc).__name__}: {exc}",
            f"Check that all ranks started and can reach MASTER_ADDR:MASTER_PORT; raise {TIMEOUT_ENV} (minutes) if they start slowly.",
        ) from exc
    return DataParallel(rank, world, local, f"cuda:{local}" if on_cuda else "cpu", owns_group=True)


def timeout_minutes() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_MIN
    except ValueError as exc:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} is not a number of minutes.", f"Set e.g. {TIMEOUT_ENV}=30.") from exc
    if value <= 0:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} must be positive.", f"Set e.g. {TIMEOUT_ENV}=30.")
    return value


@contextmanager
def main_first(parallel: DataParallel | None) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (which find what rank 0 cached:
    trained SAEs, concept associations). A no-op for a single-process run."""
    if parallel is None:
        yield
        return
    if not parallel.is_main:
        parallel.barrier()
    yield
    if parallel.is_main:
        parallel.barrier()


# -- key reconciliation (pure helpers; the collectives above use them) --------------------------

Layout = dict[str, tuple[int, ...]]


def flat_layout(flat: dict[str, torch.Tensor]) -> Layout:
    """Name -> shape of every tensor of a flat sums dict (what ranks exchange before reducing)."""
    return {name: tuple(t.shape) for name, t in flat.items()}


def union_layout(layouts: Sequence[Layout]) -> Layout:
    """Every rank's names with their shapes, sorted by name; one name with two shapes is an error."""
    union: Layout = {}
    for rank, layout in enumerate(layouts):
        for name, shape in layout.items():
            if union.setdefault(name, shape) != shape:
                raise DistributedError(
                    f"Rank {rank} has statistic {name!r} with shape {shape}, another rank {union[name]}.",
                    "Start every rank with the same SAEs and concepts.",
                )
    return dict(sorted(union.items()))


def pack_flat(flat: dict[str, torch.Tensor], layout: Layout) -> torch.Tensor:
    """One float64 vector holding `flat`'s tensors in `layout` order; absent names are zeros."""
    parts = [flat[name].reshape(-1).to(F64) if name in flat else torch.zeros(_numel(shape), dtype=F64) for name, shape in layout.items()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=F64)


def unpack_flat(buf: torch.Tensor, layout: Layout) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    at = 0
    for name, shape in layout.items():
        n = _numel(shape)
        out[name] = buf[at : at + n].reshape(shape).clone()
        at += n
    return out


def merge_evidence(prompts: dict[str, tuple[str, ...]], parts: Sequence[dict[Any, list[Any]]]) -> EvidenceStore:
    """One store holding the records of every rank (`parts`: each rank's `records`), in the
    canonical order (probe set, then prompt)."""
    merged = EvidenceStore(prompts=dict(prompts))
    for records in parts:
        for key, recs in records.items():
            merged.records.setdefault(key, []).extend(recs)
    merged.sort_records()
    return merged


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def inputs_digest(tensors: dict[Any, torch.Tensor]) -> str:
    """sha256 over tensors (sorted by key), for checking that ranks hold identical weights."""
    h = hashlib.sha256()
    for key in sorted(tensors, key=str):
        t = tensors[key].detach().cpu().contiguous()
        h.update(str(key).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "DataParallel",
    "DistributedError",
    "TIMEOUT_ENV",
    "flat_layout",
    "inputs_digest",
    "launch_from_env",
    "main_first",
    "merge_evidence",
    "pack_flat",
    "union_layout",
    "unpack_flat",
]
