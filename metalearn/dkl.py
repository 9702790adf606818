"""Deep kernel learning fitted per task from scratch (no meta-learning).

For each task a fresh MLP encoder and the GP hyperparameters are trained together on the
support set by maximising the log marginal likelihood plus the hyperparameter priors
(Wilson, Hu, Salakhutdinov & Xing, "Deep Kernel Learning", AISTATS 2016; the DKL baseline of
Chen et al., ICLR 2023). With tens of support points the encoder overfits easily, which is
what the meta-learned variants fix.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from metalearn.base import MetaLearner, check_support
from metalearn.deep_kernel import DeepKernelPredictor, check_encoder_kernel
from probrec.backbone import MLPEncoder, hidden_widths
from probrec.checks import check_positive_int, check_real
from probrec.gp.exact import GPConfig, geometry, inner_objective, prior_centres
from probrec.gp.head import GPHead, encode_labels


class DKL(MetaLearner):
    """Per-task deep kernel learning.

    Config: ``hidden`` (default ``(128,)``), ``out_dim`` (None), ``activation`` ("relu"),
    ``kernel`` ("matern52"), ``steps`` (Adam steps per task, 200), ``lr`` (1e-3),
    ``weight_decay`` (1e-4).
    """

    name = "DKL"
    defaults = {
        "hidden": (128,),
        "out_dim": None,
        "activation": "relu",
        "kernel": "matern52",
        "steps": 200,
        "lr": 1e-3,
        "weight_decay": 1e-4,
    }

    options = frozenset(defaults)

    def __init__(self, kind: str = "classification", seed: int = 0, device=None, **config: Any):
        full = {**self.defaults, **config}
        full["hidden"] = hidden_widths(full["hidden"])
        check_positive_int(full["steps"], "steps", minimum=0)
        check_real(full["lr"], "lr", strict=True)
        check_real(full["weight_decay"], "weight_decay")
        super().__init__(kind, seed, device, **full)
        self.gp_config = GPConfig(kernel=full["kernel"], kind=kind)
        check_encoder_kernel(full["kernel"], full["out_dim"], full["activation"])
        self._n_adapted = 0

    def adapt(self, support_x: Any, support_y: Any) -> DeepKernelPredictor:
        """Trains a fresh encoder and GP on the support set, then conditions on it."""
        c = self.config
        x, y = check_support(support_x, support_y, self.kind, device=self.device)
        gen = torch.Generator().manual_seed(self.seed)
        enc = MLPEncoder(
            x.shape[1],
            hidden=c["hidden"],
            out_dim=c["out_dim"],
            activation=c["activation"],
            seed=gen,
        ).to(self.device)
        targets, _, _ = encode_labels(y[None].double(), self.kind)
        with torch.no_grad():
            centres = prior_centres(self.gp_config, enc(x).double()[None])
        p = self.gp_config.n_params
        theta0 = torch.zeros(1, p, dtype=torch.float64, device=self.device)
        names = self.gp_config.names
        if "log_lengthscale" in names and centres.lengthscale_mode is not None:
            theta0[0, names.index("log_lengthscale")] = centres.lengthscale_mode.log()[0]
        theta0[0, names.index("log_noise")] = math.log(self.gp_config.noise_prior_mode)
        theta = torch.nn.Parameter(theta0)
        opt = torch.optim.Adam(
            [{"params": enc.parameters(), "weight_decay": c["weight_decay"]}, {"params": [theta]}],
            lr=c["lr"],
        )
        enc.train()
        for _ in range(int(c["steps"])):
            opt.zero_grad()
            z = enc(x).double()[None]
            loss = inner_objective(
                theta, self.gp_config, geometry(self.gp_config, z, z), targets, None, centres
            ).sum()
            loss.backward()
            opt.step()
        enc.eval()
        with torch.no_grad():
            z = enc(x).double()
        gp = GPHead(self.gp_config).fit(z, y.double(), theta=theta.detach())
        return DeepKernelPredictor(enc, gp, self.device)
