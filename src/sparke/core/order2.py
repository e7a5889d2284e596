"""The fast exact order-2 direction (RKE, Cond-RKE): two matrix products over the bank, no autograd.

For a batch x: (B, d) against bank rows r: (n, d) (prompts y: (B, e), s: (n, e)) the direction needs, per
batch row b, the weights a_bj = k_x(x_b, r_j)^2 k_y(y_b, s_j)^2 and two sums over the bank:
sum_j a_bj and sum_j a_bj r_j (see ``direction.py``). They come from

1. ``G = x @ r.T``: the kernel row, with |x_b - r_j|^2 = |x_b|^2 + |r_j|^2 - 2 G_bj from cached row norms;
2. ``a @ r``: the weighted sum of the rows.

Both products read the bank once each, so the step costs two bank reads plus O(B n) elementwise work.

- Half-precision banks (float16/bfloat16) stay in their storage type: on CUDA the products run in that type
  with float32 output (``torch.mm(..., out_dtype=torch.float32)``, fp32 accumulation). The float32 operand
  (the batch, then the weights) is split into a high and a low half-precision part stacked as 2B rows, so
  the result is the exact product with the stored rows to about float32 precision at no extra bank read
  (B is tiny: the product is bound by reading the bank). On the CPU the rows are converted chunk by chunk.
- ``Workspace`` keeps, per bank, the squared norms of its rows (updated only for newly added rows) and
  grow-only scratch buffers, so a guided step allocates nothing after the first one; ``Bank.direction``
  uses one per bank.
- No host synchronisation: the normaliser stays a tensor (the bank's pair sum is a host number it keeps).
  The one sync left is the finiteness check of the result with ``on_nonfinite="raise"`` (the default), which
  names the bad input when there is one; ``on_nonfinite="skip"`` zeroes non-finite rows on the device
  instead and counts them in an optional device tensor, with no sync at all.
- ``project_dim``: optionally the kernel weights come from a fixed Gaussian random projection of the image
  features to ``project_dim`` columns (the squared distance is unbiased, relative error about
  sqrt(2 / project_dim)); the weighted sum still uses the full rows. It halves the bank bytes read per step
  at the price of a slightly different direction (cosine to the exact one: see docs/scale.md).
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch

from .checks import (
    as_features,
    check_finite_result,
    check_nonzero_rows,
    check_rows_match,
    finite_rows,
    zero_nonfinite_rows,
)
from .kernels import squared_distances, unit_rows
from .spec import KernelSpec, as_spec

# CPU: bank rows per chunk (a half-precision chunk is converted to the compute type; a chunk of float32
# rows of d = 16,384 is 16 MiB, so the second product reads it from cache).
CPU_CHUNK = 256
CPU_CHUNK_ELEMENTS = 1 << 22
# GPU: rows per chunk; B x chunk weights are tiny, so one chunk covers any realistic bank.
GPU_CHUNK = 1 << 22
GPU_CONVERT_ELEMENTS = 1 << 28
HALF = (torch.float16, torch.bfloat16)

_OUT_DTYPE_OK: dict[str, bool] = {}


def mm_out_dtype_supported(device: torch.device, dtype: torch.dtype = torch.float16) -> bool:
    """Whether ``torch.mm(a, b, out_dtype=torch.float32)`` runs for ``dtype`` inputs on ``device`` (CUDA)."""
    key = f"{device}:{dtype}"
    if key not in _OUT_DTYPE_OK:
        ok = device.type == "cuda"
        if ok:
            try:
                a = torch.ones(2, 8, device=device, dtype=dtype)
                b = torch.ones(3, 8, device=device, dtype=dtype)
                ok = torch.mm(a, b.T, out_dtype=torch.float32).dtype == torch.float32
                ok = ok and torch.mm(a, b.T.contiguous(), out_dtype=torch.float32).shape == (2, 3)
            except (RuntimeError, TypeError):
                ok = False
        _OUT_DTYPE_OK[key] = ok
    return _OUT_DTYPE_OK[key]


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of two half-precision matrices with float32 accumulation and output (CUDA)."""
    return torch.mm(a, b, out_dtype=torch.float32)


def _split(value: torch.Tensor, dtype: torch.dtype, out: torch.Tensor) -> torch.Tensor:
    """value (B, k) float32 -> out (2B, k) in ``dtype`` with out[:B] + out[B:] == value to ~float32 precision."""
    b = value.shape[0]
    hi, lo = out[:b], out[b:]
    hi.copy_(value)
    lo.copy_(value - hi.float())
    return out


class Workspace:
    """Per-bank state of the fast direction: cached row norms (and projections) and scratch buffers.

    Rows of a ``Bank`` live in a buffer that only ever gets rows appended after the live ones, or is
    replaced by a new buffer; the workspace remembers the buffer (weakly) and how far it has read it, and
    computes norms only for rows it has not seen.
    """

    def __init__(self, project_dim: int | None = None, seed: int = 0) -> None:
        self.project_dim = project_dim
        self.seed = seed
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._seen: dict[str, tuple[weakref.ref, int]] = {}
        self._cache: dict[str, torch.Tensor] = {}
        self.projection: torch.Tensor | None = None

    def scratch(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A contiguous tensor of ``shape`` from a grow-only flat buffer (contents undefined)."""
        key = (name, dtype, str(device))
        numel = math.prod(shape)
        flat = self._buffers.get(key)
        if flat is None or flat.numel() < numel:
            flat = torch.empty(
                max(numel, 2 * (0 if flat is None else flat.numel())), dtype=dtype, device=device
            )
            self._buffers[key] = flat
        return flat[:numel].view(shape)

    def _rows_derived(
        self, name: str, buffer: torch.Tensor, start: int, stop: int, fn, cols: int | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """fn(rows) for buffer[start:stop], computed only for rows not seen before in this buffer."""
        seen = self._seen.get(name)
        cache = self._cache.get(name)
        fresh_from = 0
        if (
            seen is not None
            and seen[0]() is buffer
            and cache is not None
            and cache.shape[0] == buffer.shape[0]
        ):
            fresh_from = min(seen[1], stop)
        else:
            shape = (buffer.shape[0],) if cols is None else (buffer.shape[0], cols)
            cache = torch.empty(shape, dtype=dtype, device=buffer.device)
            self._cache[name] = cache
        first = max(fresh_from, start) if fresh_from else start
        for lo in range(first, stop, 4096):
            hi = min(lo + 4096, stop)
            cache[lo:hi] = fn(buffer[lo:hi])
        self._seen[name] = (weakref.ref(buffer), max(stop, fresh_from))
        return cache[start:stop]

    def bank_norms(self, bank, compute: torch.dtype, kernel: str):
        """(norms of x rows, norms of y rows or None, projected x rows or None) for the live rows of ``bank``.

        Gaussian: squared norms; cosine: norms. ``compute`` is float32 or float64. ``bank`` is a ``Bank``:
        its live rows are ``bank.buffer_x[bank.offset : bank.offset + len(bank)]`` (likewise ``buffer_y``).
        """
        buffer_x, buffer_y = bank.buffer_x, bank.buffer_y
        start, stop = bank.offset, bank.offset + len(bank)
        square = kernel == "gaussian"

        def norm(rows: torch.Tensor) -> torch.Tensor:
            return _norms(rows, compute, square)

        tag = f"{kernel}:{compute}"
        nx = self._rows_derived("x:" + tag, buffer_x, start, stop, norm, None, compute)
        ny = None
        if buffer_y is not None:
            ny = self._rows_derived("y:" + tag, buffer_y, start, stop, norm, None, compute)
        px = None
        if self.project_dim is not None and kernel == "gaussian":
            proj = self.get_projection(buffer_x.shape[1], buffer_x.device)

            def project(rows: torch.Tensor) -> torch.Tensor:
                return (rows.float() @ proj).to(bank.dtype)

            px = self._rows_derived("px", buffer_x, start, stop, project, self.project_dim, bank.dtype)
            # with a projection the kernel weights need only the projected rows' norms
            nx = self._rows_derived(
                "px:" + tag, buffer_x, start, stop, lambda r: norm(project(r)), None, compute
            )
        return nx, ny, px

    def get_projection(self, dim: int, device: torch.device) -> torch.Tensor:
        """Fixed (dim, project_dim) Gaussian matrix scaled by 1/sqrt(project_dim): E|P^T v|^2 = |v|^2."""
        if self.projection is None or self.projection.shape[0] != dim or self.projection.device != device:
            gen = torch.Generator().manual_seed(self.seed)
            p = torch.randn(dim, self.project_dim, generator=gen) / math.sqrt(self.project_dim)
            self.projection = p.to(device)
        return self.projection


def _chunk_rows(rows: torch.Tensor, compute: torch.dtype, ws: Workspace, name: str) -> torch.Tensor:
    """rows in ``compute`` dtype, converted into a scratch buffer when they are stored in another type."""
    if rows.dtype == compute:
        return rows
    out = ws.scratch(name, tuple(rows.shape), compute, rows.device)
    out.copy_(rows)
    return out


def _plan_chunks(x: torch.Tensor, bank_x: torch.Tensor, bank_y: torch.Tensor | None) -> tuple[bool, int]:
    """(whether half-precision bank rows multiply in float32 on the GPU, bank rows per chunk)."""
    compute, device, d = x.dtype, x.device, x.shape[1]
    half_gpu = (
        bank_x.dtype in HALF
        and (bank_y is None or bank_y.dtype == bank_x.dtype)
        and compute == torch.float32
        and mm_out_dtype_supported(device, bank_x.dtype)
    )
    if device.type != "cuda":
        return half_gpu, max(CPU_CHUNK, CPU_CHUNK_ELEMENTS // max(d, 1))
    if half_gpu or bank_x.dtype == compute:
        return half_gpu, GPU_CHUNK
    # rows converted chunk by chunk: bound the converted copy to about 1 GiB
    return half_gpu, max(1024, GPU_CONVERT_ELEMENTS // max(d, 1))


def _queries(x, y, kernel: str, proj_x, projection):
    """(x side, y side, |q|^2, |y|^2) of the batch's products with the bank rows: Gaussian, the rows as they are
    (x projected like the bank's ``proj_x``) and their squared norms; cosine, the unit rows (no norms)."""
    if kernel != "gaussian":
        return unit_rows(x), None if y is None else unit_rows(y), None, None
    qx = x if proj_x is None else (x.float() @ projection).to(x.dtype)
    return qx, y, qx.pow(2).sum(1, keepdim=True), None if y is None else y.pow(2).sum(1, keepdim=True)


def _product(
    lhs, rows, b: int, half_gpu: bool, ws: Workspace, names: tuple[str, str], compute
) -> torch.Tensor:
    """The batch's (B, c) products with a chunk of bank rows, into the scratch ``names[0]``: half rows times
    the split float32 ``lhs`` (2 B rows) on the GPU, else the rows in the compute type (scratch ``names[1]``)."""
    out = ws.scratch(names[0], (b, rows.shape[0]), compute, lhs.device)
    if half_gpu:
        two = _mm_f32(lhs, rows.T)
        return torch.add(two[:b], two[b:], out=out)
    return torch.mm(lhs, _chunk_rows(rows, compute, ws, names[1]).T, out=out)


def _chunk_weights(g, h, nx, ny, q_sq, y_sq, spec: KernelSpec, row_weight):
    """(coef, terms) of a chunk from its products g = x r^T (B, c) and h = y s^T (None without prompts), in
    place: ``coef @ rows`` is the chunk's part of sum_j a_bj r_j, and ``terms`` (B, c) its c_bj.

    Gaussian: a = c = k^2 w; cosine: a = k w over unit rows (coef a / |r_j|), c = k^2 w."""
    if spec.kernel == "gaussian":
        # log(k^2 w) = -|x - r|^2 / sigma_image^2 - |y - s|^2 / sigma_prompt^2, distances clamped at 0
        g.mul_(-2.0).add_(nx).add_(q_sq).clamp_min_(0.0)
        g.mul_(-1.0 / (spec.sigma_image * spec.sigma_image))
        if h is not None:
            h.mul_(-2.0).add_(ny).add_(y_sq).clamp_min_(0.0)
            g.add_(h, alpha=-1.0 / (spec.sigma_prompt * spec.sigma_prompt))
        a = g.exp_()
        if row_weight is not None:
            a.mul_(row_weight)
        return a, a
    k = g.div_(nx)
    a = k.clone() if h is None else k * h.div_(ny).square_()
    terms = a * k
    return a.div_(nx), terms  # sum_j a_bj u_j = sum_j (a_bj / |r_j|) r_j


def order2_sums(
    x: torch.Tensor,
    y: torch.Tensor | None,
    bank_x: torch.Tensor,
    bank_y: torch.Tensor | None,
    norm_x: torch.Tensor,
    norm_y: torch.Tensor | None,
    *,
    spec: KernelSpec,
    ws: Workspace,
    proj_x: torch.Tensor | None = None,
    projection: torch.Tensor | None = None,
    row_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per batch row against the bank: (sum_j c_bj, sum_j a_bj r_j, sum_bj k_bj^2 w_bj as a float64 scalar).

    ``row_weight`` (n,), Gaussian only: bank row j counts row_weight[j] times (sampled estimates).
    Gaussian: a = c = k^2 w on the raw rows; cosine: a = k w, c = k^2 w, the sum over unit rows. ``norm_x``,
    ``norm_y``: squared norms (Gaussian) or norms (cosine) of the bank rows, in x's dtype, or None to compute
    them chunk by chunk while the chunk is in cache (no extra pass over the bank). ``proj_x``: the bank rows
    projected by ``projection`` (weights from projected distances; Gaussian only); ``norm_x`` then holds the
    projected rows' squared norms.
    """
    kernel = spec.kernel
    compute = x.dtype
    device = x.device
    b, d = x.shape
    n = bank_x.shape[0]
    half_gpu, chunk = _plan_chunks(x, bank_x, bank_y)
    weight_sum = torch.zeros(b, dtype=compute, device=device)
    weighted = torch.zeros(b, d, dtype=compute, device=device)
    cross = torch.zeros((), dtype=torch.float64, device=device)

    lhs_x, lhs_y, q_sq, y_sq = _queries(x, y, kernel, proj_x, projection)
    search = bank_x if proj_x is None else proj_x
    square = kernel == "gaussian"
    if half_gpu:  # the float32 queries as high and low half-precision parts (module doc)
        lhs_x = _split(
            lhs_x, bank_x.dtype, ws.scratch("lhs_x", (2 * b, lhs_x.shape[1]), bank_x.dtype, device)
        )
        if y is not None:
            lhs_y = _split(
                lhs_y, bank_y.dtype, ws.scratch("lhs_y", (2 * b, y.shape[1]), bank_y.dtype, device)
            )

    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        g = _product(lhs_x, search[start:stop], b, half_gpu, ws, ("g", "rows_s"), compute)
        nx = norm_x[start:stop] if norm_x is not None else _norms(search[start:stop], compute, square)
        h = ny = None
        if y is not None:
            h = _product(lhs_y, bank_y[start:stop], b, half_gpu, ws, ("h", "rows_y"), compute)
            ny = norm_y[start:stop] if norm_y is not None else _norms(bank_y[start:stop], compute, square)
        weights = None if row_weight is None else row_weight[start:stop]
        coef, terms = _chunk_weights(g, h, nx, ny, q_sq, y_sq, spec, weights)
        weight_sum += terms.sum(1)
        cross += terms.sum(dtype=torch.float64)

        _add_weighted_rows(weighted, coef, bank_x[start:stop], half_gpu, ws)
    return weight_sum, weighted, cross


def _add_weighted_rows(
    weighted: torch.Tensor, coef: torch.Tensor, rows: torch.Tensor, half_gpu: bool, ws: Workspace
) -> None:
    """weighted (B, d) += coef (B, c) @ rows (c, d), the rows read once in their storage type."""
    b, c = coef.shape
    if half_gpu:
        # scale rows of the weights to max 1 so float16 neither underflows nor loses the small weights
        scale = coef.amax(1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)
        lhs_a = _split(coef / scale, rows.dtype, ws.scratch("lhs_a", (2 * b, c), rows.dtype, coef.device))
        w2 = _mm_f32(lhs_a, rows)
        weighted.addcmul_(w2[:b] + w2[b:], scale)
    else:
        weighted.addmm_(coef, _chunk_rows(rows, weighted.dtype, ws, "rows_x"))


def order2_direction(
    x: torch.Tensor,
    y: torch.Tensor | None,
    bank_x: torch.Tensor,
    bank_y: torch.Tensor | None,
    *,
    spec: KernelSpec,
    pair_sum: float | torch.Tensor,
    norm_x: torch.Tensor | None = None,
    norm_y: torch.Tensor | None = None,
    ws: Workspace | None = None,
    proj_x: torch.Tensor | None = None,
    projection: torch.Tensor | None = None,
    sample: tuple | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ascent direction (B, d) of log RKE / log Cond-RKE of bank U batch; see the module doc.

    ``pair_sum``: the bank's own sum of squared (joint) kernel entries. Norms are computed when not given
    (in the same pass over the bank as the kernel rows).
    ``sample``: (rows_x, rows_y, weight, norm_x, norm_y), extra rows each standing for ``weight`` rows of
    the bank (an unbiased estimate of the part of the sums that ``bank_x`` leaves out; used by
    ``IndexedBank``); their norms as for ``norm_x``/``norm_y``, or None to compute them. ``keep``: see
    ``finish_direction``.
    """
    ws = ws if ws is not None else Workspace()
    if bank_x.shape[0]:
        weight_sum, weighted, cross = order2_sums(
            x, y, bank_x, bank_y, norm_x, norm_y, spec=spec, ws=ws, proj_x=proj_x, projection=projection
        )
    else:
        weight_sum = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        weighted = torch.zeros_like(x)
        cross = torch.zeros((), dtype=torch.float64, device=x.device)
    if sample is not None and sample[0].shape[0]:
        rows_x, rows_y, weight, s_norm_x, s_norm_y = sample
        s_sum, s_rows, s_cross = order2_sums(x, y, rows_x, rows_y, s_norm_x, s_norm_y, spec=spec, ws=ws)
        weight_sum.add_(s_sum, alpha=weight)
        weighted.add_(s_rows, alpha=weight)
        cross = cross + s_cross * weight
    return finish_direction(x, y, weight_sum, weighted, cross, pair_sum, spec=spec, keep=keep)


def order2_terms(x, y, rows_x, rows_y, kernel, sigma_image, sigma_prompt, same=False, mask=None):
    """Per batch row, against ``rows``: (sum_j c_bj, sum_j a_bj r_j, sum_j k_bj^2 w_bj), dense (B x rows).

    Gaussian: a = c = k^2 w with the raw rows r; cosine: a = k w, c = k^2 w with unit rows r.
    ``same`` says rows are the batch itself: the diagonal is then exactly k = w = 1. ``mask`` (B, rows):
    0/1 factors on a and c (pairs left out).
    """
    if kernel == "gaussian":
        log_sq = squared_distances(x, rows_x) / (-sigma_image * sigma_image)
        if y is not None:
            log_sq += squared_distances(y, rows_y) / (-sigma_prompt * sigma_prompt)
        if same:
            log_sq.diagonal().fill_(0.0)
        a = torch.exp(log_sq)
        if mask is not None:
            a = a * mask
        return a.sum(1), a @ rows_x, a.sum(1)
    units = unit_rows(rows_x)
    k = unit_rows(x) @ units.T
    w = (unit_rows(y) @ unit_rows(rows_y).T).square() if y is not None else torch.ones_like(k)
    if same:
        k.diagonal().fill_(1.0)
        w.diagonal().fill_(1.0)
    a = k * w
    if mask is not None:
        a = a * mask
    c = (a * k).sum(1)
    return c, a @ units, c


def finish_direction(
    x: torch.Tensor,
    y: torch.Tensor | None,
    weight_sum: torch.Tensor,
    weighted: torch.Tensor,
    cross: torch.Tensor,
    pair_sum: float | torch.Tensor,
    *,
    spec: KernelSpec,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add the batch's own terms to the bank sums of ``order2_sums`` and form the direction (B, d).

    ``keep`` (B,) bool: rows left out of the score (``checks.finite_rows``): their terms leave the normaliser
    and the other rows, so each kept row gets the direction of the batch without them (on the device, no
    sync); their own rows of the result are meaningless (zeroed by the caller). None: every row counts.
    """
    kernel, sigma_image, sigma_prompt = spec.kernel, spec.sigma_image, spec.sigma_prompt
    compute = x.dtype
    mask = None
    if keep is not None:
        # the bank terms of a left-out row are its weight_sum (Gaussian: sum_j a_bj; cosine: sum_j c_bj)
        cross = cross - torch.where(keep, 0.0, weight_sum).sum(dtype=torch.float64)
        kept = keep.to(compute)
        mask = kept.unsqueeze(1) * kept.unsqueeze(0)
    # The batch against itself; the b = b term adds nothing to the gradient and exactly 1 to F.
    wsum, wrows, sq = order2_terms(x, y, x, y, kernel, sigma_image, sigma_prompt, same=True, mask=mask)
    weight_sum = weight_sum + wsum
    weighted = weighted + wrows
    total = (cross * 2.0 + sq.sum(dtype=torch.float64) + pair_sum).to(compute)
    if kernel == "gaussian":
        # grad_b F = -(4 / sigma^2) (sum_j a_bj x_b - sum_j a_bj x_j)
        grad_f = (weight_sum.unsqueeze(1) * x - weighted).mul_(-4.0 / (sigma_image * sigma_image))
    else:
        # grad_b F = (4 / |x_b|) (sum_j a_bj u_j - (sum_j a_bj k_bj) u_b), u = unit rows
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        grad_f = (4.0 / norms) * (weighted - weight_sum.unsqueeze(1) * unit_rows(x))
    return grad_f.div_(-total)


def _norms(rows: torch.Tensor, compute: torch.dtype, square: bool) -> torch.Tensor:
    """Row norms (squared when ``square``) in ``compute``; a fused reduction, no squared copy of the rows."""
    out = torch.empty(rows.shape[0], dtype=compute, device=rows.device)
    for lo in range(0, rows.shape[0], 4096):
        chunk = rows[lo : lo + 4096]
        norm = torch.linalg.vector_norm(chunk if chunk.dtype == compute else chunk.to(compute), dim=1)
        out[lo : lo + 4096] = norm.square_() if square else norm
    return out


def bank_direction(
    bank,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    spec: KernelSpec | None = None,
    *,
    project_dim: int | None = None,
    skipped: torch.Tensor | None = None,
    check_finite: bool = True,
    **options: Any,
) -> torch.Tensor:
    """Order-2 direction of x: (B, d) (prompts y: (B, e)) against a ``Bank``, with its cached workspace.

    Computed where the bank lives; returned on x's device. Same value as ``Bank.direction`` (which calls
    this). ``spec``: a ``KernelSpec`` or its fields as keywords. ``spec.on_nonfinite``: "raise" (one host
    sync) or "skip" (non-finite rows become zero rows, counted into ``skipped``, a 0-d tensor, in place; no
    host sync on a bank whose pair sum is already kept). ``check_finite=False`` checks nothing (a non-finite
    input gives a non-finite result); ``project_dim`` see module doc. The defaults assume L2-normalised
    features.
    """
    spec = as_spec(spec, options)
    kernel, on_nonfinite, conditional = spec.kernel, spec.on_nonfinite, spec.conditional
    home = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    x, y = _batch_for(bank, x, y, spec)
    n = len(bank)
    ws = bank.workspace(project_dim)
    if n:
        sigmas = dict(sigma_image=spec.sigma_image, sigma_prompt=spec.sigma_prompt)
        pair_sum = bank.pair_sum(kernel=kernel, conditional=conditional, **sigmas)
        nx, ny, px = ws.bank_norms(bank, x.dtype, kernel)
        bank_x, bank_y = bank.x, bank.y if conditional else None
        projection = ws.projection if px is not None else None
    else:
        pair_sum, nx, ny, px, bank_x, bank_y, projection = 0.0, None, None, None, x[:0], None, None
    raising = check_finite and on_nonfinite == "raise"
    keep = None
    if raising and kernel == "cosine":
        check_nonzero_rows(x, "x")
        if y is not None:
            check_nonzero_rows(y, "y")
    if check_finite and not raising:  # "skip": bad rows are left out of the score, on the device
        x, y, keep = finite_rows(x, y, kernel)
    parts = dict(norm_x=nx, norm_y=ny if conditional else None, ws=ws, proj_x=px, projection=projection)
    result = order2_direction(x, y, bank_x, bank_y, spec=spec, pair_sum=pair_sum, keep=keep, **parts)
    if raising:
        check_finite_result(result, {"x": x, "y": y, "bank_x": bank_x, "bank_y": bank_y}, kernel)
    elif check_finite:
        result = zero_nonfinite_rows(result, skipped, keep)
    return result.to(home)


def _batch_for(bank: Any, x: Any, y: Any, spec: KernelSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The batch (x (B, d), y (B, e) or None for an unconditional score) as features where the bank lives,
    checked against the score and the bank's widths."""
    objective, n = spec.objective, len(bank)
    if not spec.order2:
        raise ValueError(f"objective: the fast path computes 'rke' and 'cond-rke', not {objective!r}")
    x = as_features(x, "x", device=bank.device, check_finite=False)
    if spec.conditional:
        if y is None:
            raise ValueError(f"y: the {objective!r} objective needs prompt features for the batch")
        y = as_features(y, "y", dtype=x.dtype, device=x.device, check_finite=False)
        check_rows_match(x, y, "x", "y")
        if n and bank.dim_y is None:
            raise ValueError(f"objective: {objective!r} needs a bank with prompt features")
    else:
        y = None
    if n and x.shape[1] != bank.dim_x:
        raise ValueError(f"x: has {x.shape[1]} feature columns but the bank holds {bank.dim_x}")
    if n and y is not None and y.shape[1] != bank.dim_y:
        raise ValueError(f"y: has {y.shape[1]} feature columns but the bank holds {bank.dim_y}")
    return x, y
