"""L-BFGS that lives on the device: fixed history, no host synchronisation, graph-capturable.

It follows ``torch.optim.LBFGS`` without line search — the first step is scaled by min(1, 1/‖g‖₁),
later steps have length ``lr`` along the two-loop direction, H₀ = sᵀy / yᵀy — with two differences.
Where torch skips a curvature pair whose sᵀy ≤ 1e-10 (a data-dependent branch, so a host sync), this
version stores it with ρ = 0, which removes it from the two-loop recursion. And s is the step the
parameter actually took between two evaluations, not the step the optimizer proposed: the two differ
where the image is clamped to [0, 1] after an update, and a pair (s, y) whose s was not taken describes
a curvature the function does not have. At 256 px this removed the loss spikes late in a run (the
loss after 300 iterations in bf16: 1.191 against 1.270 with the proposed step; benchmarks/NOTES.md §5). Which slots hold the newest
pairs is known on the host (it only depends on the step count), so every tensor operation has fixed
shapes and runs without reading anything back.
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

    @torch.no_grad()
    def step(self, grad: torch.Tensor) -> None:
        """One L-BFGS update of ``param`` from its gradient ``grad`` (same shape), evaluated at ``param``'s
        current value (which may differ from where the last update left it, e.g. clamped)."""
        g = grad.reshape(-1).float()
        x = self.param.detach().reshape(-1).float()
        if self.k == 0:
            d = g.neg()
            t = torch.clamp(g.abs().sum().reciprocal(), max=1.0) * self.lr
        else:
            slot = (self.k - 1) % self.m
            y = g - self.prev_grad
            s = x - self.prev_param  # the step actually taken
            ys = torch.dot(y, s)
            accept = ys > 1e-10
            self.s[slot] = s
            self.y[slot] = y
            self.rho[slot] = torch.where(accept, ys.reciprocal(), torch.zeros_like(ys))
            self.h_diag = torch.where(accept, ys / torch.dot(y, y), self.h_diag)
            # Two-loop recursion over the stored pairs, newest first (slots of unused or rejected pairs
            # have ρ = 0 and drop out).
            q = g.neg()
            count = min(self.k, self.m)
            order = [(self.k - 1 - i) % self.m for i in range(count)]
            for i in order:
                self.alpha[i] = torch.dot(self.s[i], q) * self.rho[i]
                q.sub_(self.y[i] * self.alpha[i])
            d = q.mul_(self.h_diag)
            for i in reversed(order):
                beta = torch.dot(self.y[i], d) * self.rho[i]
                d.add_(self.s[i] * (self.alpha[i] - beta))
            t = self.lr
        self.prev_grad.copy_(g)
        self.prev_param.copy_(x)
        self.param.add_((d * t).view_as(self.param))
        self.k += 1
