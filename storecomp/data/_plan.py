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
class FlatReads:
    """A batch's reads as flat arrays for one native submission (:meth:`LocalReader.submit_flat`).

    ``file_index`` points into ``keys`` (every object of the plan's window); the engine computes one
    crc32c per ``crc_steps[i]`` bytes of range i, in request order, which is
    the order of ``expected`` (with the batch row, the record index in its
    object and the object offset of each checked sample, for messages).
    """

    keys: list[str]
    file_index: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    dst: np.ndarray
    crc_steps: np.ndarray | None = None
    dst_end: int | None = None  # max(dst + lengths): the slot bytes the reads need (None: not computed)
    expected: np.ndarray | None = None
    rows: np.ndarray | None = None
    local: np.ndarray | None = None
    file_offsets: np.ndarray | None = None

    def corrupt(self, crcs: np.ndarray | None) -> list[tuple[int, str]]:
        """Rows whose crc32c (the engine's ``crcs``, in request order) differs from the expected, described."""
        if self.expected is None or not self.expected.size:
            return []
        if crcs is None or crcs.size != self.expected.size:
            raise CorruptDataError(f"{self.keys[0] if self.keys else '?'}: the engine returned no checksums for a checked batch")
        assert self.rows is not None and self.local is not None and self.file_offsets is not None
        return [
            (int(self.rows[k]), f"record {int(self.local[k])} at offset {int(self.file_offsets[k])}")
            for k in np.flatnonzero(crcs != self.expected).tolist()
        ]


@dataclass
class BatchPlan:
    """The reads of one batch (per object: offsets, lengths, slot offsets) and what to check.

    Plans made by :func:`plan_window` carry their reads as :class:`FlatReads` (``flat``) instead.
    """

    n: int
    indices: np.ndarray
    reads: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    read_steps: list[np.ndarray] = field(default_factory=list)  # per read range: bytes per sample in it
    checks: list[Check] = field(default_factory=list)
    var_lengths: list[np.ndarray] = field(default_factory=list)
    nbytes: int = 0
    flat: FlatReads | None = None

    @property
    def verified(self) -> bool:
        """Some bytes of this batch are checked against a crc32c."""
        return bool(self.checks) or (self.flat is not None and self.flat.expected is not None and self.flat.expected.size > 0)


def column_keys(ds: Dataset) -> tuple[list[str], list[np.ndarray]]:
    """Every object key of ``ds``'s fixed-size columns once, and per column the key index of each part."""
    keys = list(dict.fromkeys(p.columns[c].key for p in ds.parts for c in range(len(ds.columns))))
    at = {k: i for i, k in enumerate(keys)}
    return keys, [np.array([at[p.columns[c].key] for p in ds.parts], np.int64) for c in range(len(ds.columns))]


def plan_window(
    ds: Dataset, layout: SlotLayout, batches: list[np.ndarray], verify: bool, keys: tuple[list[str], list[np.ndarray]]
) -> list[BatchPlan]:
    """Plans of several batches (each one's indices sorted ascending) at once, vectorised over the window.

    For datasets of fixed-size columns only (``ds.var_fields`` empty) and readers
    with native batches; ``keys`` is :func:`column_keys`. Each plan holds its reads
    as :class:`FlatReads`, columns in order and samples in batch order within a
    column (runs of neighbours merged into one read), ready for one submission.
    """
    all_keys, key_of = keys
    counts = np.array([b.size for b in batches], np.int64)
    total = int(counts.sum())
    idx = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    bid = np.repeat(np.arange(len(batches), dtype=np.int64), counts)
    pos = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    part, local = ds.locate(idx)
    ulocal, upos = local.astype(np.uint64), pos.astype(np.uint64)
    r_bid, r_key, r_off, r_len, r_dst, r_step = [], [], [], [], [], []
    c_bid, c_exp, c_row, c_local, c_off = [], [], [], [], []
    for c, col in enumerate(ds.columns):
        offs = ds._bases[c][part] + ulocal * np.uint64(col.step)
        dst = np.uint64(layout.columns[c]) + upos * np.uint64(col.nbytes)
        checked = verify and ds._crc[c] is not None
        if col.step == col.nbytes and total > 1:
            # Consecutive samples of one part in one batch land in consecutive slots: one read.
            brk = (bid[1:] != bid[:-1]) | (part[1:] != part[:-1]) | (local[1:] != local[:-1] + 1)
            starts = np.flatnonzero(np.concatenate([[True], brk]))
            runs = np.diff(np.append(starts, total)).astype(np.uint64)
            r_bid.append(bid[starts])
            r_key.append(key_of[c][part[starts]])
            r_off.append(offs[starts])
            r_len.append(runs * np.uint64(col.nbytes))
            r_dst.append(dst[starts])
            nreads = starts.size
        else:
            r_bid.append(bid)
            r_key.append(key_of[c][part])
            r_off.append(offs)
            r_len.append(np.full(total, col.nbytes, np.uint64))
            r_dst.append(dst)
            nreads = total
        r_step.append(np.full(nreads, col.nbytes if checked else 0, np.uint64))
        if checked:
            crc = ds._crc[c]
            assert crc is not None
            c_bid.append(bid)
            c_exp.append(crc[ds.starts[part] + local])
            c_row.append(pos)
            c_local.append(local)
            c_off.append(offs)
    # Batch by batch, columns in order (a stable sort keeps each column's reads in batch order).
    rb = np.concatenate(r_bid)
    order = np.argsort(rb, kind="stable")
    rb = rb[order]
    rkey, roff, rlen, rdst, rstep = (np.concatenate(a)[order] for a in (r_key, r_off, r_len, r_dst, r_step))
    rbounds = np.searchsorted(rb, np.arange(len(batches) + 1))
    used, rfile = np.unique(rkey, return_inverse=True)  # the objects this window touches: opened once for all of it
    window_keys = [all_keys[i] for i in used.tolist()]
    cbounds = None
    if c_bid:
        cb = np.concatenate(c_bid)
        corder = np.argsort(cb, kind="stable")
        cexp, crow, clocal, coff = (np.concatenate(a)[corder] for a in (c_exp, c_row, c_local, c_off))
        cbounds = np.searchsorted(cb[corder], np.arange(len(batches) + 1))
        cb_list = cbounds.tolist()
    per_sample = sum(col.nbytes for col in ds.columns)
    # Each batch's slot bytes, for the destination size check at submission: one pass for the window.
    ends = np.zeros(len(batches), np.int64)
    has = np.flatnonzero(rbounds[1:] > rbounds[:-1])
    if has.size:
        ends[has] = np.maximum.reduceat((rdst + rlen).astype(np.int64), rbounds[:-1][has])
    ends_list, rb_list = ends.tolist(), rbounds.tolist()
    plans = []
    for k, indices in enumerate(batches):
        lo, hi = rb_list[k], rb_list[k + 1]
        flat = FlatReads(window_keys, rfile[lo:hi], roff[lo:hi], rlen[lo:hi], rdst[lo:hi], dst_end=ends_list[k])
        if cbounds is not None:
            a, b = cb_list[k], cb_list[k + 1]
            flat.crc_steps = rstep[lo:hi]
            flat.expected, flat.rows, flat.local, flat.file_offsets = cexp[a:b], crow[a:b], clocal[a:b], coff[a:b]
        plans.append(BatchPlan(int(indices.size), indices, nbytes=int(indices.size) * per_sample, flat=flat))
    return plans


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
    """Field tensors over ``base``, the slot as a uint8 numpy array (host) or torch tensor (any device); views, no copies.

    On the host the views are cut with numpy (a fraction of torch's per-op cost)
    and each field becomes a tensor with one ``torch.from_numpy``; the tensors
    keep ``base`` alive.
    """
    import torch

    host = isinstance(base, np.ndarray)
    wrap = torch.from_numpy if host else _same
    out: dict[str, Any] = {}
    n = plan.n
    for c, col in enumerate(ds.columns):
        region = base[layout.columns[c] : layout.columns[c] + n * col.nbytes].reshape(n, col.nbytes)
        for spec, off in col.fields:
            t = region[:, off : off + spec.nbytes].view(_native_dtype(spec.dtype) if host else torch_dtype(spec.dtype))
            if spec.shape:
                t = t.reshape((n, *spec.shape)) if host else t.unflatten(1, spec.shape)
            else:
                t = t.squeeze(1)
            out[spec.name] = wrap(t)
    for v, spec in enumerate(ds.var_fields):
        lens = plan.var_lengths[v]
        total = int(lens.sum())
        start = layout.vars[v]
        vals = base[start : start + total]
        out[spec.name] = wrap(vals.view(_native_dtype(spec.dtype))) if host else vals.view(torch_dtype(spec.dtype))
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lens.astype(np.int64) // spec.dtype.itemsize, out=offsets[1:])
        out[spec.name + "_offsets"] = torch.from_numpy(offsets) if host else torch.from_numpy(offsets).to(base.device)
    return out


def _same(x: Any) -> Any:
    return x


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
_NATIVE_DTYPES: dict[str, np.dtype[Any]] = {}


def _native_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` in native byte order (what torch.from_numpy takes; the data is little-endian, like the host)."""
    key = dtype.str
    if key not in _NATIVE_DTYPES:
        _NATIVE_DTYPES[key] = dtype.newbyteorder("=")
    return _NATIVE_DTYPES[key]


def torch_dtype(dtype: np.dtype[Any]) -> Any:
    """The torch dtype of a numpy dtype (little-endian numeric types)."""
    key = dtype.str
    if key not in _TORCH_DTYPES:
        import torch

        _TORCH_DTYPES[key] = torch.from_numpy(np.empty(0, dtype.newbyteorder("="))).dtype
    return _TORCH_DTYPES[key]
