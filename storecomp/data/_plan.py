"""Read plans: where each sample of a batch comes from and where it lands.

Everything here is vectorised over the batch (numpy); the only Python loops
run per object touched (a shard, a file) or, for checksums, one C call per
sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError
from .datasets import Dataset

_REGION_ALIGN = 4096


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


@dataclass
class SlotLayout:
    """Byte offsets of each column's and var field's region in a batch slot of ``batch_size`` samples."""

    batch_size: int
    columns: list[int]
    vars: list[int]
    nbytes: int

    @classmethod
    def for_dataset(cls, ds: Dataset, batch_size: int) -> SlotLayout:
        pos = 0
        cols, vars_ = [], []
        for c in ds.columns:
            cols.append(pos)
            pos = _round_up(pos + batch_size * c.nbytes, _REGION_ALIGN)
        for cap in ds.max_var_nbytes:
            vars_.append(pos)
            pos = _round_up(pos + batch_size * cap, _REGION_ALIGN)
        return cls(batch_size, cols, vars_, max(_REGION_ALIGN, pos))


@dataclass
class Check:
    """Expected crc32c of ``lengths[i]`` bytes at ``dst[i]`` of the slot, for samples ``rows``."""

    dst: np.ndarray
    lengths: np.ndarray
    expected: np.ndarray
    part: np.ndarray
    local: np.ndarray
    file_offsets: np.ndarray


@dataclass
class BatchPlan:
    """The reads of one batch (per object: offsets, lengths, slot offsets) and what to check."""

    n: int
    indices: np.ndarray
    reads: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    read_steps: list[np.ndarray] = field(default_factory=list)  # per read range: bytes per sample in it
    checks: list[Check] = field(default_factory=list)
    var_lengths: list[np.ndarray] = field(default_factory=list)
    nbytes: int = 0


def plan_batch(ds: Dataset, layout: SlotLayout, indices: np.ndarray, verify: bool) -> BatchPlan:
    """Plan the reads for ``indices`` (sorted ascending: runs of neighbours become one read)."""
    n = int(indices.size)
    plan = BatchPlan(n, indices)
    part, local = ds.locate(indices)
    pos = np.arange(n, dtype=np.uint64)
    ulocal = local.astype(np.uint64)
    for c, col in enumerate(ds.columns):
        offs = ds._bases[c][part] + ulocal * np.uint64(col.step)
        dst = np.uint64(layout.columns[c]) + pos * np.uint64(col.nbytes)
        lens = np.full(n, col.nbytes, np.uint64)
        crc = ds._crc[c]
        if verify and crc is not None:
            expected = crc[ds.starts[part] + local]
            plan.checks.append(Check(dst, lens, expected, part, local, offs))
        if col.step == col.nbytes and n > 1:
            # Consecutive samples of one part land in consecutive slots: merge them into one read.
            brk = (part[1:] != part[:-1]) | (local[1:] != local[:-1] + 1)
            starts = np.flatnonzero(np.concatenate([[True], brk]))
            runs = np.diff(np.append(starts, n)).astype(np.uint64)
            _add_reads(plan, ds, part[starts], offs[starts], runs * np.uint64(col.nbytes), dst[starts], column=c)
        else:
            _add_reads(plan, ds, part, offs, lens, dst, column=c)
        plan.nbytes += n * col.nbytes
    for v, _spec in enumerate(ds.var_fields):
        g = ds._var_starts[v][part] + local
        voffs = ds._var_offsets[v]
        assert voffs is not None
        lo = voffs[g]
        lens = voffs[g + 1] - lo
        offs = ds._var_bases[v][part] + lo
        dst = np.uint64(layout.vars[v]) + np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.uint64)
        plan.var_lengths.append(lens)
        vcrc = ds._var_crc[v]
        if verify and vcrc is not None:
            plan.checks.append(Check(dst, lens, vcrc[ds.starts[part] + local], part, local, offs))
        keep = lens > 0
        _add_reads(plan, ds, part[keep], offs[keep], lens[keep], dst[keep], var=v)
        plan.nbytes += int(lens.sum())
    return plan


def _add_reads(
    plan: BatchPlan,
    ds: Dataset,
    part: np.ndarray,
    offs: np.ndarray,
    lens: np.ndarray,
    dst: np.ndarray,
    *,
    column: int | None = None,
    var: int | None = None,
) -> None:
    if not part.size:
        return
    # part is sorted (indices are): one submission per object touched.
    bounds = np.flatnonzero(np.diff(part)) + 1
    for lo, hi in zip(np.concatenate([[0], bounds]), np.append(bounds, part.size), strict=True):
        p = ds.parts[int(part[lo])]
        key = p.columns[column].key if column is not None else p.vars[var].key  # type: ignore[index]
        plan.reads.append((key, offs[lo:hi], lens[lo:hi], dst[lo:hi]))
        step = np.full(hi - lo, ds.columns[column].nbytes, np.uint64) if column is not None else lens[lo:hi]
        plan.read_steps.append(np.asarray(step, np.uint64))


def crc_steps(plan: BatchPlan) -> np.ndarray | None:
    """Per read range (in :attr:`BatchPlan.reads` order), the bytes of one sample: the engine
    computes one crc32c per sample as the range lands. None when nothing is checked."""
    if not plan.checks or not plan.read_steps:
        return None
    return np.concatenate(plan.read_steps)


def _crcs_by_sample(plan: BatchPlan, crcs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slot offset, crc32c) of every sample chunk the engine checked, sorted by slot offset."""
    dst = np.concatenate([r[3] for r in plan.reads]).astype(np.int64)
    lens = np.concatenate([r[2] for r in plan.reads]).astype(np.int64)
    steps = np.concatenate(plan.read_steps).astype(np.int64)
    counts = -(-lens // np.maximum(steps, 1))
    first = np.cumsum(counts) - counts
    k = np.arange(int(counts.sum())) - np.repeat(first, counts)
    at = np.repeat(dst, counts) + k * np.repeat(steps, counts)
    order = np.argsort(at, kind="stable")
    return at[order], crcs[order]


def find_corrupt(plan: BatchPlan, slot: np.ndarray, crcs: np.ndarray | None = None) -> list[tuple[int, str]]:
    """Rows (batch positions) whose bytes fail their crc32c, with a description of each.

    ``crcs``: the engine's per-sample crc32c of the reads (the future's
    ``checksums()`` for :func:`crc_steps`); without them each sample is
    checksummed here.
    """
    bad: list[tuple[int, str]] = []
    table = _crcs_by_sample(plan, crcs) if crcs is not None and crcs.size else None
    for chk in plan.checks:
        if table is not None:
            at, vals = table
            pos = np.minimum(np.searchsorted(at, chk.dst.astype(np.int64)), max(0, at.size - 1))
            got_arr = np.where(chk.lengths > 0, vals[pos], np.uint32(0)).astype(np.uint32)
            mismatch = np.flatnonzero(got_arr != chk.expected)
            for i in mismatch.tolist():
                bad.append((i, f"record {int(chk.local[i])} at offset {int(chk.file_offsets[i])}"))
            continue
        ends = (chk.dst + chk.lengths).tolist()
        got = [crc32c(slot[d:e]) for d, e in zip(chk.dst.tolist(), ends, strict=True)]  # views of the slot
        mismatch = np.flatnonzero(np.array(got, np.uint32) != chk.expected)
        for i in mismatch.tolist():
            bad.append((i, f"record {int(chk.local[i])} at offset {int(chk.file_offsets[i])}"))
    return bad


def corrupt_error(ds: Dataset, plan: BatchPlan, bad: list[tuple[int, str]]) -> CorruptDataError:
    i, what = bad[0]
    part, _ = ds.locate(plan.indices[i : i + 1])
    key = ds.parts[int(part[0])].name
    more = f" ({len(bad) - 1} more in this batch)" if len(bad) > 1 else ""
    return CorruptDataError(f"{ds.reader.describe(key)}: checksum mismatch in {what}{more}")


def build_tensors(ds: Dataset, layout: SlotLayout, plan: BatchPlan, base: Any) -> dict[str, Any]:
    """Field tensors over ``base`` (a uint8 torch tensor holding the slot, on any device); views, no copies."""
    import torch

    out: dict[str, Any] = {}
    n = plan.n
    for c, col in enumerate(ds.columns):
        region = base[layout.columns[c] : layout.columns[c] + n * col.nbytes].view(n, col.nbytes)
        for spec, off in col.fields:
            t = region[:, off : off + spec.nbytes].view(torch_dtype(spec.dtype))
            out[spec.name] = t.unflatten(1, spec.shape) if spec.shape else t.squeeze(1)
    for v, spec in enumerate(ds.var_fields):
        lens = plan.var_lengths[v]
        total = int(lens.sum())
        start = layout.vars[v]
        out[spec.name] = base[start : start + total].view(torch_dtype(spec.dtype))
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lens.astype(np.int64) // spec.dtype.itemsize, out=offsets[1:])
        out[spec.name + "_offsets"] = torch.from_numpy(offsets).to(base.device)
    return out


def drop_rows(batch: dict[str, Any], ds: Dataset, keep: np.ndarray) -> dict[str, Any]:
    """The batch without the rows where ``keep`` is False (a copy; only used when skipping corrupt samples)."""
    import torch

    rows = torch.from_numpy(np.flatnonzero(keep)).to(next(iter(batch.values())).device)
    out = {}
    for c in ds.columns:
        for spec, _ in c.fields:
            out[spec.name] = batch[spec.name].index_select(0, rows)
    for spec in ds.var_fields:
        offs = batch[spec.name + "_offsets"].cpu().numpy()
        pieces = [batch[spec.name][int(offs[i]) : int(offs[i + 1])] for i in np.flatnonzero(keep)]
        vals = torch.cat(pieces) if pieces else batch[spec.name][:0].clone()
        lens = np.diff(offs)[keep]
        new = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        out[spec.name] = vals
        out[spec.name + "_offsets"] = torch.from_numpy(new).to(vals.device)
    return out


_TORCH_DTYPES: dict[str, Any] = {}


def torch_dtype(dtype: np.dtype[Any]) -> Any:
    """The torch dtype of a numpy dtype (little-endian numeric types)."""
    key = dtype.str
    if key not in _TORCH_DTYPES:
        import torch

        _TORCH_DTYPES[key] = torch.from_numpy(np.empty(0, dtype.newbyteorder("="))).dtype
    return _TORCH_DTYPES[key]
