"""L-BFGS that lives on the device: fixed history, no host synchronisation.

It follows ``torch.optim.LBFGS`` without line search — the first step is scaled by min(1, 1/‖g‖₁),
later steps have length ``lr`` along the two-loop direction, H₀ = sᵀy / yᵀy — with three differences.
Where torch skips a curvature pair whose sᵀy ≤ 1e-10 (a data-dependent branch, so a host sync), this
version stores it with ρ = 0, which removes it from the two-loop recursion; it also skips pairs whose
s and y are nearly orthogonal, which after a tiny step in low precision are noise. And s is the step
the parameter actually took between two evaluations, not the step the optimizer proposed: the two
differ where the image is clamped to [0, 1] after an update, and a pair (s, y) whose s was not taken
describes a curvature the function does not have. At 256 px this removed the loss spikes late in a run (the
loss after 300 iterations in bf16: 1.191 against 1.270 with the proposed step; benchmarks/NOTES.md §5).

Which slots hold the newest pairs is known on the host (it only depends on the step count), so every
tensor operation has fixed shapes and runs without reading anything back. :class:`CompactLBFGS` is
the same method with no host state at all, for CUDA graphs.
"""

from __future__ import annotations

import torch


class DeviceLBFGS:
    """Minimizes a function of one tensor ``param``; call :meth:`step` with its gradient each iteration.

    Args:
        param: the tensor being optimized (updated in place).
        lr: step length after the first step.
        history: number of curvature pairs kept.
    """

    def __init__(self, param: torch.Tensor, lr: float = 1.0, history: int = 100):
        self.param = param
        self.lr = lr
        self.m = history
        n = param.numel()
        opts = dict(device=param.device, dtype=torch.float32)
        self.s = torch.zeros(history, n, **opts)
        self.y = torch.zeros(history, n, **opts)
        self.rho = torch.zeros(history, **opts)
        self.alpha = torch.zeros(history, **opts)
        self.h_diag = torch.ones((), **opts)
        self.prev_grad = torch.zeros(n, **opts)
        self.prev_param = torch.zeros(n, **opts)
        self.k = 0  # iterations taken: a host integer, never read from the device

    def initial_inverse_hessian(self, v: torch.Tensor) -> torch.Tensor:
        """H₀·v up to its scale γ: v itself (H₀ = γI). The one place to change the method's preconditioner
        (benchmarks/optimizer_variants.py tries a frequency filter here); it must stay symmetric positive
        definite."""
        return v

    def _curvature_is_real(self, ys: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Whether a pair (s, y) measures curvature rather than noise: sᵀy > 0, and s and y not nearly
        orthogonal. After a tiny step, y is the difference of two gradients that differ by less than
        their rounding (a bf16 network's gradients carry ~0.4% noise), so y is noise, nearly
        orthogonal to s (cos ~ 1/√n), and sᵀy is as likely positive as not. Accepted, such a pair has
        ρ = 1/sᵀy of 10⁷ or more and sends the next step far off: after the first step at 256 px, a
        loss of 837 from 10.7 (benchmarks/NOTES.md §9). Pairs of real steps had cos ≥ 0.078 there."""
        cos_min = max(1e-2, 3.0 / self.param.numel() ** 0.5)  # 1e-2, or 3σ of a random cosine
        return (ys > 1e-10) & (ys > cos_min * torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y))

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One L-BFGS update of ``param`` from its gradient ``grad`` (same shape), evaluated at ``param``'s
        current value (which may differ from where the last update left it, e.g. clamped)."""
        g = grad.reshape(-1).float()
        x = self.param.detach().reshape(-1).float()
        if self.k == 0:
            d = self.initial_inverse_hessian(g).neg()
            t = torch.clamp(d.abs().sum().reciprocal(), max=1.0) * self.lr
        else:
            slot = (self.k - 1) % self.m
            y = g - self.prev_grad
            s = x - self.prev_param  # the step actually taken
            ys = torch.dot(y, s)
            accept = self._curvature_is_real(ys, s, y)
            self.s[slot] = s
            self.y[slot] = y
            self.rho[slot] = torch.where(accept, ys.reciprocal(), torch.zeros_like(ys))
            self.h_diag = torch.where(accept, ys / torch.dot(y, self.initial_inverse_hessian(y)), self.h_diag)
            # Two-loop recursion over the stored pairs, newest first (slots of unused or rejected pairs
            # have ρ = 0 and drop out).
            q = g.neg()
            count = min(self.k, self.m)
            order = [(self.k - 1 - i) % self.m for i in range(count)]
            for i in order:
                self.alpha[i] = torch.dot(self.s[i], q) * self.rho[i]
                q.addcmul_(self.y[i], self.alpha[i], value=-1)  # in place: no n-sized temporary per pair
            d = self.initial_inverse_hessian(q).mul_(self.h_diag)
            for i in reversed(order):
                beta = torch.dot(self.y[i], d) * self.rho[i]
                d.addcmul_(self.s[i], self.alpha[i] - beta)
            t = self.lr
        self.prev_grad.copy_(g)
        self.prev_param.copy_(x)
        self.param.add_((d * t).view_as(self.param))
        self.k += 1


class CompactLBFGS(DeviceLBFGS):
    """The same L-BFGS in its compact matrix form (Byrd, Nocedal & Schnabel 1994), for CUDA graphs.

    The two-loop recursion of :class:`DeviceLBFGS` visits the stored pairs newest first, so which
    slots it reads depends on the step count — a host integer that a captured graph would freeze. Here
    every step does the same operations on all ``history`` slots: a handful of matrix-vector products
    with S and Y (history × n) and small history × history solves, whose slot order comes from a step
    counter on the device. Unused and rejected pairs are stored as zeros and drop out of the formula.

    With H₀ = γI, R = triu(SᵀY) (chronological), D = diag(SᵀY):
    H·g = γg + S·R⁻ᵀ((D + γYᵀY)·p − γYᵀg) − γY·p, where p = R⁻¹Sᵀg.

    The first :meth:`step` (no pairs yet) runs eagerly; every later one can be captured: it updates
    all its state in place and reads nothing back.
    """

    def __init__(self, param: torch.Tensor, lr: float = 1.0, history: int = 100):
        super().__init__(param, lr, history)
        opts = {"device": param.device, "dtype": torch.float32}
        self.sy = torch.zeros(history, history, **opts)  # s_iᵀy_j, slot order
        self.yy = torch.zeros(history, history, **opts)  # y_iᵀy_j, slot order
        self.k_device = torch.zeros((), device=param.device, dtype=torch.long)
        self.slots = torch.arange(history, device=param.device)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        if self.k == 0:
            super().step(grad)
            self.k_device.fill_(1)
            return
        g = grad.reshape(-1).float()
        x = self.param.detach().reshape(-1).float()
        y = g - self.prev_grad
        s = x - self.prev_param
        ys = torch.dot(y, s)
        accept = self._curvature_is_real(ys, s, y)
        s = torch.where(accept, s, torch.zeros_like(s))
        y = torch.where(accept, y, torch.zeros_like(y))
        self.h_diag.copy_(torch.where(accept, ys / torch.dot(y, y).clamp_min(1e-30), self.h_diag))  # in place: captured
        slot = ((self.k_device - 1) % self.m).reshape(1)
        self.s.index_copy_(0, slot, s[None])
        self.y.index_copy_(0, slot, y[None])
        # Row and column ``slot`` of SᵀY and YᵀY from the new pair.
        s_dot_y, y_dot_s, y_dot_y = self.s @ y, self.y @ s, self.y @ y
        self.sy.index_copy_(0, slot, y_dot_s[None])
        self.sy.index_copy_(1, slot, s_dot_y[:, None])
        self.yy.index_copy_(0, slot, y_dot_y[None])
        self.yy.index_copy_(1, slot, y_dot_y[:, None])
        # Chronological order, oldest first: the slot written next is the oldest.
        order = (self.k_device + self.slots) % self.m
        sy = self.sy[order][:, order]
        yy = self.yy[order][:, order]
        diag = torch.diagonal(sy)
        unused = diag == 0
        r = torch.triu(sy) + torch.diag(unused.float())  # unused pairs: identity rows, decoupled
        d_mat = torch.diag(torch.where(unused, torch.zeros_like(diag), diag))
        gamma = self.h_diag
        a = (self.s @ g)[order]
        b = (self.y @ g)[order] * gamma
        p = torch.linalg.solve_triangular(r, a[:, None], upper=True)
        top = torch.linalg.solve_triangular(r.T, (d_mat + gamma * yy) @ p - b[:, None], upper=False)
        # Back to slot order for the products with S and Y.
        top_slots = torch.empty_like(top).index_copy_(0, order, top)
        p_slots = torch.empty_like(p).index_copy_(0, order, p)
        hg = gamma * g + (self.s.T @ top_slots).squeeze(1) - gamma * (self.y.T @ p_slots).squeeze(1)
        self.prev_grad.copy_(g)
        self.prev_param.copy_(x)
        self.param.add_((hg * -self.lr).view_as(self.param))
        self.k += 1
        self.k_device.add_(1)


class BatchedLBFGS:
    """:class:`DeviceLBFGS` for a batch of B images optimized together, each with its own L-BFGS: every
    dot product, step length, curvature-pair acceptance and H₀ scale is per image, so that no image's
    trajectory depends on another's (the batch shares only the slots' order, which is the step count).

    Args:
        param: the B×… tensor being optimized (updated in place); image b is ``param[b]``.
        lr: step length after the first step.
        history: number of curvature pairs kept per image.
    """

    def __init__(self, param: torch.Tensor, lr: float = 1.0, history: int = 100):
        self.param = param
        self.lr = lr
        self.m = history
        b, n = param.shape[0], param[0].numel()
        opts = dict(device=param.device, dtype=torch.float32)
        self.s = torch.zeros(history, b, n, **opts)
        self.y = torch.zeros(history, b, n, **opts)
        self.rho = torch.zeros(history, b, **opts)
        self.alpha = torch.zeros(history, b, **opts)
        self.h_diag = torch.ones(b, **opts)
        self.prev_grad = torch.zeros(b, n, **opts)
        self.prev_param = torch.zeros(b, n, **opts)
        self.cos_min = max(1e-2, 3.0 / n**0.5)  # as DeviceLBFGS._curvature_is_real, per image
        self.k = 0

    def keep(self, rows: list[int], param: torch.Tensor) -> None:
        """Go on with images ``rows`` only, whose tensor is now ``param`` (the others left the batch):
        each keeps its own curvature pairs and scale, so its trajectory is the one it had."""
        index = torch.tensor(rows, device=self.param.device)
        self.param = param
        self.s, self.y = self.s.index_select(1, index), self.y.index_select(1, index)
        self.rho, self.alpha = self.rho.index_select(1, index), self.alpha.index_select(1, index)
        self.h_diag = self.h_diag.index_select(0, index)
        self.prev_grad, self.prev_param = self.prev_grad.index_select(0, index), self.prev_param.index_select(0, index)

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One L-BFGS update of every image from its gradient (``grad``, shaped like ``param``)."""
        b = self.param.shape[0]
        g = grad.reshape(b, -1).float()
        x = self.param.detach().reshape(b, -1).float()
        if self.k == 0:
            d = g.neg()
            t = torch.clamp(g.abs().sum(dim=1).reciprocal(), max=1.0)[:, None] * self.lr
        else:
            slot = (self.k - 1) % self.m
            y = g - self.prev_grad
            s = x - self.prev_param  # the step each image actually took
            ys = (y * s).sum(dim=1)
            norms = torch.linalg.vector_norm(s, dim=1) * torch.linalg.vector_norm(y, dim=1)
            accept = (ys > 1e-10) & (ys > self.cos_min * norms)
            self.s[slot] = s
            self.y[slot] = y
            self.rho[slot] = torch.where(accept, ys.reciprocal(), torch.zeros_like(ys))
            self.h_diag = torch.where(accept, ys / (y * y).sum(dim=1), self.h_diag)
            q = g.neg()
            order = [(self.k - 1 - i) % self.m for i in range(min(self.k, self.m))]
            for i in order:
                self.alpha[i] = torch.linalg.vecdot(self.s[i], q) * self.rho[i]
                q.addcmul_(self.y[i], self.alpha[i][:, None], value=-1)
            d = q.mul_(self.h_diag[:, None])
            for i in reversed(order):
                beta = torch.linalg.vecdot(self.y[i], d) * self.rho[i]
                d.addcmul_(self.s[i], (self.alpha[i] - beta)[:, None])
            t = self.lr
        self.prev_grad.copy_(g)
        self.prev_param.copy_(x)
        self.param.add_((d * t).view_as(self.param))
        self.k += 1
