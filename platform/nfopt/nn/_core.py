"""The engine behind NPLinear and HNPLinear.

Every equivariant linear map of the NFN paper over an MLP/CNN weight space in which each neuron
layer ``l = 0..L`` is either *permutable* (acted on by ``S_{n_l}``) or *fixed* (input/output
layers under the hidden-only HNP symmetry). Fixed axes are folded into the features (see
``_layout``), after which both layers share one formula. Per weight layer ``i`` with input
``X_i: (B, F_i, m_i, m_{i-1})`` the pooled quantities are

    r_i = mean_rows X_i : (B, F_i, m_{i-1})      c_i = mean_cols X_i : (B, F_i, m_i)
    g_i = mean X_i      : (B, F_i)               bm_i = mean b_i     : (B, Fb_i)

Per permutable neuron layer ``l``: ``P_l = [c_l, b_l, r_{l+1}] : (D_l, B, n_l)`` (the features
that live on neuron ``l``: row means of its incoming weight, its bias, column means of its
outgoing weight; feature-major, so each neuron map is one GEMM over ``B n_l`` columns with no
transposing copies, forward or backward) and globally ``z = [g_1..g_L, bm_1..bm_L] : (B, Dz)``. The outputs are

    H_i = A_i X_i                 (per entry; only when both axes are permutable)
        + (Q_i P_i)[κ_i]          broadcast along columns  (when neuron layer i is permutable)
        + (Q_{i-1} P_{i-1})[ρ_i]  broadcast along rows     (when neuron layer i-1 is permutable)
        + z Z[i] + β_i            broadcast everywhere
    u_i = (Q_i P_i)[υ_i] + z Z[L+i] + β_{L+i}

``β: (ΣG,)``, or per batch element ``(B, ΣG)`` (inputs constant over each tensor, such as a
learned optimizer's per-network features, enter there at no per-entry cost).

which, with every layer permutable, is exactly the NP layer (per-entry, row, column,
neighbouring-layer and global-mean terms) and, with layers 0 and L fixed, the HNP layer.

Two numerically identical implementations: :func:`forward` in plain differentiable torch ops
(used under ``torch.func`` transforms, ``torch.compile``, dispatch modes and for double backward),
and :class:`FusedEquivariantLinear`, a custom autograd function with a hand-written backward that
saves only the layer input and small pooled tensors and makes the fewest passes over the big
per-entry tensors (the backward of a linear equivariant map is again one). Where the native
kernels apply (CPU float32/64, :func:`_native_for`), inference and both directions of the
autograd function run as one C++ op each (``csrc/np_layer.cpp``: the same steps, with the
pooling written straight into ``z`` / ``P`` and the per-entry passes fused), tested equal to the
plain ops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode

from nfopt.nn import _native
from nfopt.nn._mix import functorch_active, outer_sum
from nfopt.weightspace import NetworkSpec

Tensor = torch.Tensor


@dataclass(frozen=True)
class Plan:
    """Static structure of one equivariant linear map (sizes only, no tensors)."""

    spec: NetworkSpec
    perm: tuple[bool, ...]  # per neuron layer 0..L: permutable?
    c_in: int
    c_out: int

    @property
    def L(self) -> int:
        return self.spec.num_layers

    def _fold(self, i: int, c: int) -> int:  # weight feature size of python layer i
        n = self.spec.neuron_sizes
        return self.spec.kernel_sizes[i] * c * (1 if self.perm[i + 1] else n[i + 1]) * (1 if self.perm[i] else n[i])

    def fw(self, i: int, out: bool = False) -> int:
        return self._fold(i, self.c_out if out else self.c_in)

    def fb(self, i: int, out: bool = False) -> int:
        c = self.c_out if out else self.c_in
        return c * (1 if self.perm[i + 1] else self.spec.neuron_sizes[i + 1])

    def has_A(self, i: int) -> bool:
        return self.perm[i] and self.perm[i + 1]

    def p_parts(self, level: int, out: bool = False) -> list[int]:
        """Feature sizes of ``P_level``'s parts: ``[c, b]`` of the incoming layer, ``[r]`` of the
        outgoing one (inputs), or the matching ``[κ, υ, ρ]`` output sizes (``out=True``)."""
        return list(self._p_parts[out][level])

    def __post_init__(self) -> None:
        # sizes computed once, as plain attributes (not functools.cached_property: its lock stops
        # torch.compile's tracer)
        L = self.L

        def parts(level: int, out: bool) -> tuple[int, ...]:
            p = (self.fw(level - 1, out), self.fb(level - 1, out)) if level >= 1 else ()
            return p + ((self.fw(level, out),) if level < L else ())

        p_parts = tuple(tuple(parts(lv, out) for lv in range(L + 1)) for out in (False, True))
        z_parts = tuple(
            tuple(self.fw(i, out) for i in range(L)) + tuple(self.fb(i, out) for i in range(L)) for out in (False, True)
        )
        object.__setattr__(self, "_p_parts", p_parts)
        object.__setattr__(self, "_z_parts", z_parts)
        object.__setattr__(self, "dz", sum(z_parts[0]))
        # the plan as the native layer ops take it (csrc/np_layer.cpp): flags, then every
        # permutable level's part sizes in order (outputs, inputs), the global sizes
        levels = [lv for lv in range(L + 1) if self.perm[lv]]
        flat = tuple([s for lv in levels for s in p_parts[out][lv]] for out in (True, False))
        native = ([int(p) for p in self.perm], flat[0], list(z_parts[1]), flat[1], list(z_parts[0]))
        object.__setattr__(self, "native_args", native)

    def z_in_parts(self) -> list[int]:
        return list(self._z_parts[0])

    def z_out_parts(self) -> list[int]:
        return list(self._z_parts[1])


def _mean(x: Tensor, dim: int) -> Tensor:
    n = x.shape[dim]
    if n == 1:
        return x.squeeze(dim)
    # under autograd, sum * 1/n: mean's backward would materialise a full-size tensor
    return x.sum(dim) * (1.0 / n) if torch.is_grad_enabled() else x.mean(dim)


def _pool(plan: Plan, xs, bs):
    """Pooled features ``(z, P)`` of folded inputs (shapes in the module docstring)."""
    r = [_mean(x, 2) for x in xs]  # (B, F, m_c)
    c = [_mean(x, 3) for x in xs]  # (B, F, m_r)
    g = [_mean(ci, 2) for ci in c]  # (B, F)
    bm = [_mean(b, 2) for b in bs]  # (B, Fb)
    z = torch.cat(g + bm, dim=-1)  # (B, Dz)
    P = []
    for level in range(plan.L + 1):
        if not plan.perm[level]:
            P.append(None)
            continue
        parts = ([c[level - 1], bs[level - 1]] if level >= 1 else []) + ([r[level]] if level < plan.L else [])
        P.append(torch.cat([p.transpose(0, 1) for p in parts]))  # (D_level, B, n_level)
    return z, P


def _mix(plan: Plan, z: Tensor, P, Q, Z: Tensor, beta: Tensor):
    """The small matmuls: per-neuron terms ``κ, υ, ρ: (B, G, n)`` and global ``zt, vt: (B, G)``."""
    glob = torch.addmm(beta, z, Z).split(plan.z_out_parts(), dim=-1)
    zt, vt = glob[: plan.L], glob[plan.L :]
    kappa, ups, rho = [None] * plan.L, [None] * plan.L, [None] * plan.L
    for level in range(plan.L + 1):
        if P[level] is None:
            continue
        outs = [t.transpose(0, 1) for t in _fmul(Q[level], P[level]).split(plan.p_parts(level, out=True))]
        if level >= 1:
            kappa[level - 1], ups[level - 1] = outs[0], outs[1]
        if level < plan.L:
            rho[level] = outs[-1]
    return zt, vt, kappa, ups, rho


def _forward(plan: Plan, xs, bs, A, Q, Z: Tensor, beta: Tensor, relu: bool = False):
    z, P = _pool(plan, xs, bs)
    zt, vt, kappa, ups, rho = _mix(plan, z, P, Q, Z, beta)
    hs, us = [], []
    for i, x in enumerate(xs):
        # fold the global term into the smaller broadcast term. The per-neuron terms are
        # transposed views of feature-major products; with the (B, G, 1) global term as the first
        # operand the sum comes out contiguous (B, G, n) in one pass (TensorIterator takes the
        # layout from the first operand whose strides decide), keeping the big outputs contiguous
        if rho[i] is not None:
            row = (zt[i][:, :, None] + rho[i]).contiguous()  # (B, G, m_c)
            col = kappa[i].contiguous() if kappa[i] is not None else None  # (B, G, m_r)
        elif kappa[i] is not None:
            row, col = None, (zt[i][:, :, None] + kappa[i]).contiguous()
        else:
            row, col = None, zt[i][:, :, None]  # (B, G, 1)
        if A[i] is not None:
            h = _entry_mix(x, A[i], col, row)  # (B, G, m_r, m_c)
        elif row is not None:
            h = row[:, :, None] + col[..., None] if col is not None else row[:, :, None].contiguous()
        else:
            h = col[..., None].contiguous()
        hs.append(torch.relu(h) if relu else h)
        u = vt[i][:, :, None]  # (B, Gb, 1)
        u = (u + ups[i]).contiguous() if ups[i] is not None else u.contiguous()  # u first: see above
        us.append(torch.relu(u) if relu else u)
    return hs, us, z, P


def _forward_with(native, plan: Plan, xs, bs, A, Q, Z: Tensor, beta: Tensor, relu: bool):
    """:func:`_forward`, as one native op where ``native`` kernels are given (``csrc/np_layer.cpp``,
    the same ops in C++ with the fused kernels for the big passes): ``(hs, us, z, P)``."""
    if native is None:
        return _forward(plan, xs, bs, A, Q, Z, beta, relu)
    perm, parts_out, z_out = plan.native_args[:3]
    res = native.np_forward(xs, bs, A, Q, Z, beta, perm, parts_out, z_out, relu)
    n = len(xs)
    it = iter(res[2 * n + 1 :])
    return res[:n], res[n : 2 * n], res[2 * n], [next(it) if p else None for p in plan.perm]


def forward(plan: Plan, xs, bs, A, Q, Z: Tensor, beta: Tensor, native=None, relu: bool = False):
    """Folded inputs ``xs[i]: (B, F_i, m_i, m_{i-1})``, ``bs[i]: (B, Fb_i, m_i)`` -> outputs in the
    same layout with ``c_out`` channels (``relu``: passed through a ReLU). Plain torch ops,
    differentiable to any order, unless ``native`` kernels are passed (for inference only)."""
    hs, us, _, _ = _forward_with(native, plan, xs, bs, A, Q, Z, beta, relu)
    return hs, us


class FusedEquivariantLinear(torch.autograd.Function):
    """``forward`` with a hand-written backward. Call as
    ``apply(plan, L, relu, *xs, *bs, *A, *Q, Z, beta)`` where absent ``A``/``Q`` entries are
    ``None``; ``relu``: the outputs passed through a ReLU, applied as they are stored (in the
    native mix's registers where it runs) and masked into the output gradients in the backward,
    so the activation costs no pass of its own. Both directions run as one native op each where
    the kernels apply (:func:`_native_for`), else as the plain ops below."""

    @staticmethod
    def forward(ctx, plan: Plan, n: int, relu: bool, *args):
        xs, bs = args[:n], args[n : 2 * n]
        A, Q = args[2 * n : 3 * n], args[3 * n : 4 * n + 1]
        Z, beta = args[-2], args[-1]
        native = _native_for(xs)
        hs, us, z, P = _forward_with(native, plan, xs, bs, A, Q, Z, beta, relu)
        ctx.plan, ctx.n, ctx.native, ctx.beta_ndim, ctx.relu = plan, n, native, beta.ndim, relu
        ctx.z, ctx.P = z, P
        ctx.present = (tuple(a is not None for a in A), tuple(q is not None for q in Q))
        outs = (*hs, *us) if relu else ()  # the ReLU's mask: where an output is positive
        ctx.save_for_backward(*xs, *[a for a in A if a is not None], *[q for q in Q if q is not None], Z, *outs)
        return (*hs, *us)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        plan, n = ctx.plan, ctx.n
        saved = list(ctx.saved_tensors)
        xs, rest = saved[:n], saved[n:]
        a_present, q_present = ctx.present
        A = [rest.pop(0) if p else None for p in a_present]
        Q = [rest.pop(0) if p else None for p in q_present]
        Z = rest.pop(0)
        z, P = ctx.z, ctx.P
        # inputs needing no gradient (e.g. the data into a stack's first layer): skip their adjoints
        need_x = ctx.needs_input_grad[3 : 3 + n]
        need_b = ctx.needs_input_grad[3 + n : 3 + 2 * n]
        # under torch.func (e.g. a vmapped jacobian) the native ops have no batching rule
        if ctx.native is not None and not functorch_active(*grads):  # csrc/np_layer.cpp
            perm, parts_in, z_in = plan.native_args[0], *plan.native_args[3:]
            flags = [int(v) for v in need_x], [int(v) for v in need_b], ctx.beta_ndim == 2
            saved_p = [p for p in P if p is not None]
            res = ctx.native.np_backward(
                grads[:n], grads[n:], xs, A, Q, Z, z, saved_p, rest, perm, parts_in, z_in, *flags
            )
            # only the gradients that exist, in order
            it, present = iter(res), (*need_x, *need_b, *a_present, *q_present, True, True)
            return (None, None, None, *(next(it) if p else None for p in present))
        dhs, dus = [g.contiguous() for g in grads[:n]], grads[n:]
        if ctx.relu:  # the ReLU's backward: gradients through positive outputs only
            dhs = [torch.ops.aten.threshold_backward(g, h, 0) for g, h in zip(dhs, rest[:n])]
            dus = [torch.ops.aten.threshold_backward(g, u, 0) for g, u in zip(dus, rest[n:])]
        L = plan.L

        # 1. reductions of the output gradients (the adjoints of the broadcasts)
        s_col, s_row, d_ups, dzt, dvt = [None] * L, [None] * L, [None] * L, [], []
        for i, dh in enumerate(dhs):
            s_col[i] = _sum(dh, 3) if plan.perm[i + 1] else None  # (B, G, n_i)
            s_row[i] = _sum(dh, 2) if plan.perm[i] else None  # (B, G, n_{i-1})
            if plan.perm[i + 1]:
                d_ups[i] = dus[i]
            s = s_row[i] if s_row[i] is not None else s_col[i]
            dzt.append(s.sum(2) if s is not None else dh.reshape(dh.shape[0], dh.shape[1]))  # (B, G, 1, 1)
            dvt.append(dus[i].sum(2))

        # 2. global terms
        dglob = torch.cat(dzt + dvt, dim=-1)  # (B, ΣG)
        dZ = z.t() @ dglob
        dbeta = dglob.sum(0) if ctx.beta_ndim == 1 else dglob  # (ΣG,) or per batch element (B, ΣG)
        need_in = any(need_x) or any(need_b)
        if need_in:
            dz = (dglob @ Z.t()).split(plan.z_in_parts(), dim=-1)
            dg, dbm = dz[:L], dz[L:]

        # 3. per-neuron terms
        dc, db_direct, dr, dQ = [None] * L, [None] * L, [None] * L, [None] * (L + 1)
        for level in range(L + 1):
            if P[level] is None:
                continue
            douts = ([s_col[level - 1], d_ups[level - 1]] if level >= 1 else []) + ([s_row[level]] if level < L else [])
            dout = torch.cat([d.transpose(0, 1) for d in douts])  # (Σ out parts, B, n_level)
            p = P[level]
            dQ[level] = (
                dout.reshape(dout.shape[0], dout.shape[1] * dout.shape[2])
                @ p.reshape(p.shape[0], p.shape[1] * p.shape[2]).t()
            )
            if not need_in:
                continue
            dp = [t.transpose(0, 1) for t in _fmul(Q[level].t(), dout).split(plan.p_parts(level))]
            if level >= 1:
                dc[level - 1], db_direct[level - 1] = dp[0], dp[1]
            if level < L:
                dr[level] = dp[-1]

        # 4. input gradients: per-entry adjoint plus broadcast adjoints of the means
        dxs, dbs, dA = [], [], [None] * L
        for i, x in enumerate(xs):
            bsz, f, mr, mc = x.shape
            if A[i] is not None:
                dA[i] = _weight_grad(dhs[i], x)  # (G, F)
            if not need_x[i]:  # e.g. the first layer's input: skip the big pass
                dxs.append(None)
            else:
                dct = dg[i][:, :, None] * (1.0 / (mr * mc))  # (B, F, 1): the global mean, via c_i
                if dc[i] is not None:
                    dct = torch.add(dct, dc[i], alpha=1.0 / mc).contiguous()  # (B, F, m_r)
                if A[i] is not None:  # (B, F, m_r, m_c)
                    dx = _entry_mix(dhs[i], A[i].t(), dct.expand(bsz, f, mr), dr[i] * (1.0 / mr))
                else:
                    dx = dct[..., None]
                    if dr[i] is not None:
                        dx = torch.add(dx, dr[i][:, :, None], alpha=1.0 / mr)
                    dx = dx.expand(bsz, f, mr, mc).contiguous()
                dxs.append(dx)
            if not need_b[i]:
                dbs.append(None)
                continue
            db = dbm[i][:, :, None] * (1.0 / mr)
            if db_direct[i] is not None:
                db = db + db_direct[i]
            dbs.append(db.expand(bsz, db.shape[1], mr).contiguous())
        return (None, None, None, *dxs, *dbs, *dA, *dQ, dZ, dbeta)


def _native_for(xs):
    """The fused CPU kernels when they apply to these inputs, else ``None``: not under
    ``torch.compile`` (the plain ops, which it fuses itself) nor under a Python dispatch mode
    (e.g. a FLOP counter or fake tensors, which should see every op)."""
    x = xs[0]
    if (
        x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or torch.compiler.is_compiling()
        or _get_current_dispatch_mode() is not None
    ):
        return None
    return _native.ops()


def _fmul(w: Tensor, x: Tensor) -> Tensor:
    """``w @ x`` over feature-major ``x``: ``(G, F) x (F, B, N) -> (G, B, N)``, one GEMM over the
    ``B N`` columns (MKL runs ``B`` separate skinny ``N``-column products far below its peak:
    measured 1056x1056 at N=32 166 vs 182 GFLOP/s, at N=10 28 vs 183)."""
    return (w @ x.reshape(x.shape[0], x.shape[1] * x.shape[2])).view(w.shape[0], *x.shape[1:])


def _entry_mix(x: Tensor, w: Tensor, col: Tensor, row: Tensor) -> Tensor:
    """The per-entry term with its broadcasts, ``w x[b, :, r, c] + col[b, :, r] + row[b, :, c]``:
    ``(B, F, m_r, m_c) -> (B, G, m_r, m_c)`` for ``w: (G, F)``, ``col: (B, G, m_r)``, ``row: (B, G, m_c)``:
    a broadcast-filled output and one batched GEMM accumulating into it."""
    bsz, f, mr, mc = x.shape
    h = torch.add(col[..., None], row[:, :, None])  # (B, G, m_r, m_c)
    return _lmul_(h.view(bsz, h.shape[1], mr * mc), w, x.reshape(bsz, f, mr * mc)).view(h.shape)


def _weight_grad(dh: Tensor, x: Tensor) -> Tensor:
    """The per-entry weight's gradient ``sum_b dh[b] x[b]^T``: ``(B, G, m_r, m_c), (B, F, m_r, m_c)
    -> (G, F)``."""
    bsz, f, mr, mc = x.shape
    return outer_sum(dh.reshape(bsz, dh.shape[1], mr * mc), x.reshape(bsz, f, mr * mc))


def _lmul_(out: Tensor, w: Tensor, x: Tensor) -> Tensor:
    """``out[b] + w @ x[b]``: in place (batched GEMM with beta=1), or out of place under
    ``torch.func`` (in-place ``baddbmm_`` has no batching rule)."""
    wx = w.expand(x.shape[0], *w.shape)
    return torch.baddbmm(out, wx, x) if functorch_active(out, w, x) else out.baddbmm_(wx, x)


def _sum(x: Tensor, dim: int) -> Tensor:
    return x.squeeze(dim) if x.shape[dim] == 1 else x.sum(dim)


def init_parameters(plan: Plan, A, Q, Z: Tensor, beta: Tensor, gain: float = math.sqrt(2.0)) -> None:
    """He-style uniform init over each output's total fan-in (per-entry + neuron + global terms)
    so that a stack with ReLU keeps activations O(1); ``beta`` starts at zero."""
    L = plan.L

    def fan_w(i: int) -> int:
        fan = plan.dz + (plan.fw(i) if A[i] is not None else 0)
        fan += sum(plan.p_parts(i + 1)) if plan.perm[i + 1] else 0  # κ: features on neuron layer i+1
        fan += sum(plan.p_parts(i)) if plan.perm[i] else 0  # ρ: features on neuron layer i
        return fan

    def fan_b(i: int) -> int:
        return plan.dz + (sum(plan.p_parts(i + 1)) if plan.perm[i + 1] else 0)

    def fill(t: Tensor, fan: int) -> None:
        bound = gain * math.sqrt(3.0 / fan)
        t.uniform_(-bound, bound)

    with torch.no_grad():
        for i in range(L):
            if A[i] is not None:
                fill(A[i], fan_w(i))
        fans = [fan_w(i) for i in range(L)] + [fan_b(i) for i in range(L)]
        for zpart, fan in zip(Z.split(plan.z_out_parts(), dim=-1), fans):
            fill(zpart, fan)
        for level in range(L + 1):
            if Q[level] is None:
                continue
            outs = Q[level].split(plan.p_parts(level, out=True), dim=0)
            owners = ([fan_w(level - 1), fan_b(level - 1)] if level >= 1 else []) + (
                [fan_w(level)] if level < L else []
            )
            for qpart, fan in zip(outs, owners):
                fill(qpart, fan)
        beta.zero_()
