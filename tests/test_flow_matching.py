"""Rectified flow: the path and target, the Euler sampler, the timestep samplers' densities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from cascadevsr.errors import UserError
from cascadevsr.train import flow


def test_path_target_and_clean_estimate_agree():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    t = torch.tensor([0.0, 0.3, 1.0])
    xt = flow.interpolate(x0, eps, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    v = flow.velocity_target(x0, eps)
    torch.testing.assert_close(flow.predict_x0(xt, v, t), x0)
    assert flow.flow_loss(v, x0, eps, t) == 0
    with pytest.raises(UserError, match="unknown loss weighting"):
        flow.flow_loss(v, x0, eps, t, weighting="snr")


def test_euler_with_the_exact_velocity_field_recovers_z0(carphone_frames):
    z0 = torch.from_numpy(carphone_frames[:2].copy()).float() / 127.5 - 1  # a real clip as the data point
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    # for data concentrated at z0 the marginal velocity is exactly (x_t - z0) / t
    seen = []
    out = flow.euler_sample(lambda x, t: (x - z0) / t, noise, steps=50, callback=seen.append)
    torch.testing.assert_close(out, z0, atol=1e-5, rtol=0)
    assert len(seen) == 50 and seen[0].t == 1.0 and seen[-1].s == 0.0
    for step in seen:  # x̂0 is exposed at every step, and it is exact here
        torch.testing.assert_close(step.x0_hat, z0, atol=1e-5, rtol=0)


def test_euler_transports_gaussian_noise_to_gaussian_data():
    # data N(mu, sigma^2): the exact marginal velocity is linear in x; 200 Euler steps land close
    mu, sigma = 2.0, 0.5

    def velocity(x, t):
        a, b = 1 - t, t  # x_t = a·x0 + b·eps
        var = a * a * sigma**2 + b * b
        x0_mean = mu + a * sigma**2 * (x - a * mu) / var
        eps_mean = b * (x - a * mu) / var
        return eps_mean - x0_mean

    noise = torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = flow.euler_sample(velocity, noise, steps=200)
    assert abs(out.mean().item() - mu) < 0.01 and abs(out.std().item() - sigma) < 0.01


def test_timestep_grid_is_uniform_from_noise_to_data():
    grid = flow.timestep_grid(50)
    assert len(grid) == 51 and grid[0] == 1.0 and grid[-1] == 0.0
    assert np.allclose(np.diff(grid), -0.02)
    shifted = flow.timestep_grid(10, shift=3.0)
    assert shifted[0] == 1.0 and shifted[-1] == 0.0 and shifted[5] > 0.5


def _ks_pvalue(sampler, n=20_000, seed=0):
    t = sampler.sample(n, torch.Generator().manual_seed(seed)).numpy().astype(np.float64)
    assert t.min() >= 0 and t.max() <= 1
    return stats.kstest(t, sampler.cdf).pvalue


def test_uniform_sampler_matches_its_density():
    assert _ks_pvalue(flow.make_timestep_sampler("uniform")) > 0.01


@pytest.mark.parametrize("m,s", [(0.0, 1.0), (0.5, 0.8)])
def test_logit_normal_sampler_matches_its_density(m, s):
    sampler = flow.make_timestep_sampler("logit_normal", m=m, s=s)
    assert _ks_pvalue(sampler) > 0.01
    # and it is not uniform
    t = sampler.sample(20_000, torch.Generator().manual_seed(0)).numpy()
    assert stats.kstest(t, "uniform").pvalue < 1e-6


def test_detail_aware_sampler_reads_the_analysis_file_and_matches_its_density(tmp_path):
    # the shape the paper reports: most detail change at high and mid noise, little at low noise
    edges = np.linspace(0, 1, 51)
    weights = np.concatenate([np.full(10, 0.1), np.linspace(0.5, 1.0, 40)])
    path = tmp_path / "detail_pdf.json"
    flow.write_density_file(path, edges, weights)
    sampler = flow.make_timestep_sampler("detail_aware", pdf_file=path)
    assert _ks_pvalue(sampler) > 0.01
    t = sampler.sample(20_000, torch.Generator().manual_seed(1)).numpy()
    assert (t < 0.2).mean() == pytest.approx(1.0 / (1.0 + 30.0), abs=0.01)  # 10·0.1 of 10·0.1 + 40·0.75
    assert stats.kstest(t, "uniform").pvalue < 1e-6


def test_samplers_are_reproducible_from_their_generator():
    sampler = flow.make_timestep_sampler("logit_normal")
    a = sampler.sample(5, torch.Generator().manual_seed(7))
    b = sampler.sample(5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_bad_sampler_names_and_density_files_are_refused(tmp_path):
    with pytest.raises(UserError, match="unknown timestep sampler 'mode'"):
        flow.make_timestep_sampler("mode")
    with pytest.raises(UserError, match="does not exist"):
        flow.make_timestep_sampler("detail_aware", pdf_file=tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"edges": [0, 0.5, 1], "pdf": [1, -1]}))
    with pytest.raises(UserError, match="non-negative"):
        flow.make_timestep_sampler("detail_aware", pdf_file=bad)
    bad.write_text(json.dumps({"edges": [0, 1], "pdf": [1, 1]}))
    with pytest.raises(UserError, match="K\\+1 edges"):
        flow.make_timestep_sampler("detail_aware", pdf_file=bad)
    with pytest.raises(UserError, match="bad options"):
        flow.make_timestep_sampler("uniform", m=1)
