"""Implicit-function-theorem hypergradients as one reusable autograd piece.

For a bilevel problem with inner solution ``theta*(phi) = argmin_theta L_in(theta, phi)``
and outer loss ``L_out(theta*(phi), phi)``, the implicit function theorem gives

    dL_out/dphi = dL_out/dphi|_direct - (d2 L_in / dphi dtheta) H^-1 dL_out/dtheta,

with ``H = d2 L_in / dtheta2`` at ``theta*`` (Chen, Tripp & Hernandez-Lobato, ICLR 2023,
eq. 6; Lorraine, Vicol & Duvenaud, AISTATS 2020). :func:`implicit_argmin` returns
``theta*`` as a tensor whose backward pass applies exactly this correction, so after
``loss.backward()`` on any outer loss built from it, the ``.grad`` of every tensor that
``phi`` depends on (a backbone's parameters) holds the IFT hypergradient.

``H^-1 v`` is an exact solve for small ``theta`` (dense, or ``p x p`` blocks when
``theta [T, p]`` holds independent per-task problems) and conjugate gradients on
Hessian-vector products for large ``theta``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from probrec.checks import check_positive_int, check_real

InnerFn = Callable[..., torch.Tensor]
SOLVERS = ("auto", "exact", "block", "cg")


@dataclass
class _Spec:
    inner: InnerFn
    inner_grad: InnerFn | None
    solver: str
    hessian: torch.Tensor | None
    cg_tol: float
    cg_max_iter: int
    damping: float


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> torch.Tensor:
    """Solves ``A x = b`` for symmetric positive-definite ``A`` given only ``x -> A x``.

    Stops when ``||r|| <= tol * ||b||`` or after ``max_iter`` iterations (Hestenes & Stiefel,
    1952), or early, returning the current iterate, at a direction ``p`` with
    ``p^T A p <= 0`` (``A`` not positive definite there, e.g. an inner solution that is not a
    minimum); use ``solver="exact"`` / ``"block"`` in :func:`implicit_argmin` where ``A`` may be
    indefinite.

    Raises:
        ValueError: ``tol`` negative or not finite, or ``max_iter`` below 1 (no iteration
            would return ``x = 0``).
    """
    tol = check_real(tol, "tol")
    max_iter = check_positive_int(max_iter, "max_iter")
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum()
    bnorm = b.norm().clamp_min(1e-30)
    for _ in range(max_iter):
        if rs.sqrt() <= tol * bnorm:
            break
        ap = matvec(p)
        denom = (p * ap).sum()
        if denom <= 0:  # not positive definite along p: stop with the current iterate
            break
        a = rs / denom
        x = x + a * p
        r = r - a * ap
        rs_new = (r * r).sum()
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def _solve(
    spec: _Spec, theta: torch.Tensor, grad_fn_theta: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``H^-1 v`` at ``theta``; ``grad_fn_theta`` is dL_in/dtheta with its graph."""
    solver = spec.solver
    n = theta.numel()
    if solver == "auto":
        solver = (
            "block"
            if spec.hessian is not None and spec.hessian.dim() == 3
            else ("exact" if n <= 256 else "cg")
        )

    def hvp(vec: torch.Tensor, retain: bool = True) -> torch.Tensor:
        (out,) = torch.autograd.grad(grad_fn_theta, theta, grad_outputs=vec, retain_graph=retain)
        return out + spec.damping * vec

    if solver == "cg":
        return conjugate_gradient(hvp, v, tol=spec.cg_tol, max_iter=spec.cg_max_iter)
    if solver == "block":
        if theta.dim() != 2:
            raise ValueError(
                f"the block solver needs theta of shape [T, p], got {tuple(theta.shape)}"
            )
        h = spec.hessian
        if h is None:  # p HVPs give all T blocks (separable objective)
            p = theta.shape[-1]
            cols = [
                hvp(torch.nn.functional.one_hot(torch.full(theta.shape[:1], j), p).to(theta))
                for j in range(p)
            ]
            h = torch.stack(cols, dim=-1)
        else:
            h = h.to(theta.dtype) + spec.damping * torch.eye(
                h.shape[-1], dtype=theta.dtype, device=theta.device
            )
        return torch.linalg.solve(h, v[..., None])[..., 0]
    # exact dense solve
    if spec.hessian is not None:
        h = spec.hessian.to(theta.dtype)
        h = torch.block_diag(*h) if h.dim() == 3 else h  # per-task blocks: block diagonal
        h = h + spec.damping * torch.eye(n, dtype=theta.dtype, device=theta.device)
    else:
        eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
        h = torch.stack([hvp(eye[i].reshape(theta.shape)).reshape(-1) for i in range(n)])
        h = 0.5 * (h + h.T)
    return torch.linalg.solve(h, v.reshape(-1)).reshape(theta.shape)


class _ImplicitArgmin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, theta_star: torch.Tensor, *phi: torch.Tensor) -> torch.Tensor:
        ctx.spec = spec
        ctx.save_for_backward(theta_star, *phi)
        return theta_star.clone()

    @staticmethod
    def backward(ctx, grad_theta: torch.Tensor):
        spec: _Spec = ctx.spec
        theta_star, *phi = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            theta = theta_star.detach().requires_grad_(True)
            phi_d = [p.detach().requires_grad_(nd) for p, nd in zip(phi, needs)]
            if spec.inner_grad is not None:  # closed form: one backward for the mixed term
                g = spec.inner_grad(theta, *phi_d)
            else:
                f = spec.inner(theta, *phi_d)
                if f.dim() > 0:
                    f = f.sum()
                (g,) = torch.autograd.grad(f, theta, create_graph=True)
            w = _solve(spec, theta, g, grad_theta.detach().to(theta.dtype))
            wanted = [p for p, nd in zip(phi_d, needs) if nd]
            grads = (
                torch.autograd.grad(g, wanted, grad_outputs=-w, allow_unused=True) if wanted else ()
            )
        it = iter(grads)
        out = []
        for p, nd in zip(phi, needs):
            gp = next(it) if nd else None
            out.append(torch.zeros_like(p) if (nd and gp is None) else gp)
        return (None, None, *out)


def implicit_argmin(
    inner: InnerFn,
    theta_star: torch.Tensor,
    phi: Sequence[torch.Tensor],
    *,
    solver: str = "auto",
    hessian: torch.Tensor | None = None,
    cg_tol: float = 1e-10,
    cg_max_iter: int = 100,
    damping: float = 0.0,
    inner_grad: InnerFn | None = None,
) -> torch.Tensor:
    """Attaches the implicit derivative ``dtheta*/dphi`` to a converged inner solution.

    Args:
        inner: ``inner(theta, *phi) -> scalar`` (or per-task values, summed), a pure function
            of its arguments.
        theta_star: converged minimiser of ``inner`` at the current ``phi`` (any shape; its
            value is returned unchanged).
        phi: tensors ``inner`` depends on that carry gradients (e.g. support features made by
            a backbone, or the backbone's parameters for a functional ``inner``).
        solver: ``"exact"`` (dense Hessian, small ``theta``), ``"block"`` (``theta [T, p]``
            of independent tasks: ``T`` solves of ``p x p``), ``"cg"`` (conjugate gradients on
            Hessian-vector products, large ``theta``) or ``"auto"``.
        hessian: optional precomputed Hessian at ``theta_star`` (``[n, n]`` dense, or
            ``[T, p, p]`` blocks for ``theta [T, p]``, which the exact solver assembles
            block-diagonally), e.g. from a Newton inner solver; saves recomputing it (the
            conjugate-gradient solver uses Hessian-vector products instead).
        cg_tol: relative residual tolerance of conjugate gradients.
        cg_max_iter: iteration cap of conjugate gradients.
        damping: ``lambda`` added to the Hessian's diagonal (0 for the exact IFT).
        inner_grad: optional ``inner_grad(theta, *phi) -> dL_in/dtheta`` (same shape as
            ``theta``) in closed form, built from differentiable operations. The mixed term
            ``d2 L_in / dphi dtheta`` is then one backward pass through it instead of a double
            backward through ``inner`` (e.g. :func:`probrec.gp.exact.inner_objective_grad`,
            which avoids differentiating a Cholesky factorisation twice). It must equal
            autograd's gradient of ``inner``.

    Returns:
        A tensor equal to ``theta_star`` whose gradient flows to ``phi`` through
        ``-H^-1 d2 L_in / dtheta dphi``.

    Raises:
        ValueError: unknown ``solver``, ``cg_tol`` not positive, ``damping`` negative,
            ``cg_max_iter`` below 1, or ``hessian`` of neither shape.

    Example:
        >>> phi = torch.tensor([2.0], requires_grad=True)
        >>> inner = lambda th, ph: ((th - ph ** 2) ** 2).sum()   # theta* = phi^2
        >>> th = implicit_argmin(inner, (phi ** 2).detach(), [phi])
        >>> th.sum().backward(); float(phi.grad)                 # d phi^2 / d phi = 4
        4.0
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {list(SOLVERS)}")
    cg_tol = check_real(cg_tol, "cg_tol", strict=True)
    # 0 iterations would solve H w = v with w = 0: a hypergradient without the IFT correction
    cg_max_iter = check_positive_int(cg_max_iter, "cg_max_iter")
    damping = check_real(damping, "damping")
    if hessian is not None:  # a wrong shape failed inside loss.backward(), far from here
        n = theta_star.numel()
        dense = (n, n)
        blocks = (*theta_star.shape, theta_star.shape[-1]) if theta_star.dim() == 2 else None
        if tuple(hessian.shape) not in (dense, blocks):
            raise ValueError(
                f"hessian must be the dense {list(dense)} Hessian of theta_star "
                f"{list(theta_star.shape)}"
                + (f" or its {list(blocks)} per-task blocks" if blocks else "")
                + f", got {list(hessian.shape)}"
            )
    if theta_star.requires_grad:
        theta_star = theta_star.detach()
    spec = _Spec(inner, inner_grad, solver, hessian, cg_tol, cg_max_iter, damping)
    return _ImplicitArgmin.apply(spec, theta_star, *phi)


def ift_hypergradient(
    inner: InnerFn,
    outer: Callable[..., torch.Tensor],
    theta_star: torch.Tensor,
    phi: Sequence[torch.Tensor],
    **solver_kwargs,
) -> tuple[torch.Tensor, ...]:
    """``dL_out(theta*(phi), phi) / dphi`` for each tensor of ``phi`` (explicit form).

    Args:
        inner: ``inner(theta, *phi)``, minimised by ``theta_star``.
        outer: ``outer(theta, *phi) -> scalar``.
        theta_star: converged inner solution.
        phi: leaf tensors with ``requires_grad=True``.
        **solver_kwargs: forwarded to :func:`implicit_argmin`.

    Returns:
        The total derivatives, one per ``phi`` tensor (zeros where there is no dependence).
    """
    theta = implicit_argmin(inner, theta_star, phi, **solver_kwargs)
    loss = outer(theta, *phi)
    grads = torch.autograd.grad(loss, list(phi), allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, phi))
