"""ModelEnsemble: the averaged distribution, averaged spreads and panels against the members
computed directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from probrec.flows import ConditionalIntegerFlow, GaussianHead, ModelEnsemble
from probrec.flows.ensemble import member_seeds

LABELS = (1, 2, 3, 4, 5)
FIT = {"epochs": 3, "batch_size": 32, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def ensemble(population):
    train, valid, _ = population
    ens = ModelEnsemble(
        6,
        LABELS,
        model="ConditionalIntegerFlow",
        members=3,
        item_latent=1,
        quadrature=8,
        hidden=(16,),
        seed=1,
    )
    return ens.fit(
        train.features,
        train.labels,
        train.mask,
        valid=(valid.features, valid.labels, valid.mask),
        **FIT,
    )


def test_log_prob_is_the_log_of_the_members_average_probability(ensemble, population):
    x = population[2].features
    direct = torch.stack([m.predict_proba(x).double() for m in ensemble.members]).mean(0)
    logp = ensemble.label_log_probs(x).double()
    torch.testing.assert_close(logp, direct.log(), rtol=0, atol=1e-6)
    # exact for any input, including far outside the training features
    far = 50 * torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    s = ensemble.predict_proba(far).double().sum(-1)
    torch.testing.assert_close(s, torch.ones(16, dtype=torch.float64), rtol=0, atol=1e-6)


def test_members_differ_and_spread_is_their_average(ensemble, population):
    x = population[2].features
    p = [m.predict_proba(x) for m in ensemble.members]
    assert not torch.allclose(p[0], p[1], atol=1e-4)
    mean, sd = ensemble.item_moments(x)
    sds = torch.stack([m.item_moments(x)[1] for m in ensemble.members])
    torch.testing.assert_close(sd, sds.mean(0), rtol=0, atol=1e-6)
    values = torch.tensor(LABELS, dtype=mean.dtype)
    torch.testing.assert_close(mean, ensemble.predict_proba(x) @ values, rtol=0, atol=1e-5)


def test_panels_share_one_member(population):
    """Two members with opposite certainties: a panel comes entirely from one of them."""
    x = population[2].features[:1]
    ens = ModelEnsemble(6, LABELS, model="GaussianHead", members=2, hidden=(4,), seed=0)
    with torch.no_grad():
        for m, mu in zip(ens.members, (1.0, 5.0)):
            m.head.weight.zero_()
            m.head.bias.copy_(torch.tensor([mu, -20.0]))  # sigma ~ 1e-3: one label
    ens.fitted = True  # hand-set weights, no fit (marks the members too)
    draws = ens.sample(np.repeat(x, 2000, 0), 6, seed=0).numpy()  # [6, 2000]
    assert set(np.unique(draws)) == {1, 5}
    assert (draws == draws[:1]).all()  # every panel answers with one member
    # one annotation per item: the averaged distribution, 50 / 50
    assert chisquare([(draws[0] == 1).sum(), (draws[0] == 5).sum()]).pvalue > 1e-3


def test_seeds_and_errors():
    s = member_seeds(0, 5)
    assert len(set(s)) == 5 and s == member_seeds(0, 5) and s != member_seeds(1, 5)
    ens = ModelEnsemble(3, LABELS, model=GaussianHead, members=2, seed=0)
    assert [m.seed for m in ens.members] == member_seeds(0, 2)
    assert ens.kind == "ordinal"
    with pytest.raises(ValueError, match="annotator model class"):
        ModelEnsemble(3, LABELS, model="NoSuchModel")
    with pytest.raises(ValueError, match="annotator model class"):
        ModelEnsemble(3, LABELS, model="ModelEnsemble")
    with pytest.raises(ValueError, match="members"):
        ModelEnsemble(3, LABELS, model=ConditionalIntegerFlow, members=0)
    with pytest.raises(ValueError, match="3 features"):
        ens.fit(np.zeros((4, 2)), [[1], [2], [3], [4]], **FIT)
