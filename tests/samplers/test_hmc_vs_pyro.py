"""Our HMC transition against an independent implementation: Pyro's HMC.

Both use an identity mass matrix, ``L`` leapfrog steps of a fixed step size and a Metropolis
test, and both draw, per transition, the momentum (``randn(d)``) and then the uniform of the
test from a torch Mersenne-Twister stream. Seeded alike, the two chains must therefore take the
same path: every state equal up to round-off, the same transitions accepted. A wrong leapfrog
(half steps, sign, the last half kick), a wrong Hamiltonian or a wrong acceptance rule would
separate them at the first transition it matters to.
"""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.targets import BNNPosterior, Gaussian

pyro = pytest.importorskip("pyro")
from pyro.infer.mcmc import HMC as PyroHMC  # noqa: E402
from pyro.infer.mcmc import MCMC as PyroMCMC  # noqa: E402


def _pyro_chain(
    target, x0: torch.Tensor, h: float, n_leapfrog: int, n: int, seed: int
) -> torch.Tensor:
    """``n`` states of Pyro's HMC from ``x0`` ``[d]`` (its draws from torch's global stream)."""
    kernel = PyroHMC(
        potential_fn=lambda p: -target.log_prob(p["w"][None])[0],
        step_size=h,
        num_steps=n_leapfrog,
        adapt_step_size=False,
        adapt_mass_matrix=False,
    )
    mcmc = PyroMCMC(
        kernel, num_samples=n, warmup_steps=0, initial_params={"w": x0}, disable_progbar=True
    )
    with torch.random.fork_rng(devices=[]):
        pyro.set_rng_seed(seed)
        mcmc.run()
    return mcmc.get_samples()["w"].detach()


def _our_chain(target, x0: torch.Tensor, h: float, n_leapfrog: int, n: int, seed: int):
    res = samplers.HMC(
        step_size=h,
        n_leapfrog=n_leapfrog,
        n_chains=1,
        burn_in=0,
        thin=1,
        adapt=False,
        init=x0[None],
        compile=False,
        progress=False,
    ).run(target, n, seed=seed)
    return res.chains[0], res


def _n_moves(chain: torch.Tensor, x0: torch.Tensor) -> int:
    prev = torch.cat([x0[None], chain[:-1]])
    return int((chain != prev).any(-1).sum())


@pytest.mark.parametrize(
    "case",
    [
        # a correlated Gaussian, step size where about a third of the transitions are rejected
        ("gaussian", 0.45, 8),
        # the DiGS paper's 550-weight BNN posterior (closed-form gradient on our side)
        ("bnn", 0.02, 10),
    ],
)
def test_hmc_follows_pyro_hmc_on_the_same_random_stream(case) -> None:
    name, h, n_leapfrog = case
    torch.manual_seed(0)
    if name == "gaussian":
        a = torch.randn(6, 6, dtype=torch.float64)
        target = Gaussian(torch.randn(6, dtype=torch.float64), a @ a.T / 6 + 0.2 * torch.eye(6))
        x0 = torch.zeros(6, dtype=torch.float64)
    else:
        target = BNNPosterior(n_train=100, n_test=10, seed=0).double()
        x0 = target.init_positions(1, torch.Generator().manual_seed(1))[0]
    n = 60
    ours, res = _our_chain(target, x0, h, n_leapfrog, n, seed=5)
    theirs = _pyro_chain(target, x0, h, n_leapfrog, n, seed=5)
    assert ours.dtype == theirs.dtype == torch.float64
    moves = _n_moves(ours, x0)
    assert moves == _n_moves(theirs, x0)
    assert 0.2 * n < moves < n, "the case must exercise both accepted and rejected transitions"
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    assert res.n_grad_evals == 1 + n * n_leapfrog
