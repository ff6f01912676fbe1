"""Simulated bubbles and memory equal the reference's closed forms (unit and unequal costs)."""

import pytest

from parplan.baselines import build_baseline
from parplan.schedule.costs import PipelineCosts
from parplan.schedule.simulate import simulate


def run(name, n, m, **cost):
    schedule = build_baseline(name, n, m)
    return simulate(schedule, PipelineCosts.uniform(schedule.num_model_stages, **cost))


@pytest.mark.parametrize("n,m", [(2, 2), (3, 7), (4, 8), (8, 20), (8, 9), (5, 13)])
@pytest.mark.parametrize("f,i,w", [(1, 1, 1), (1.0, 1.2, 0.8), (2.0, 0.5, 1.5)])
def test_gpipe_and_1f1b_bubble_is_n_minus_1_times_f_plus_b(n, m, f, i, w):
    for name in ("gpipe", "1f1b"):
        sim = run(name, n, m, f=f, i=i, w=w)
        assert sim.bubble_per_rank == pytest.approx([(n - 1) * (f + i + w)] * n)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 20), (3, 5)])
def test_1f1b_peak_activation_is_n_and_gpipe_is_m(n, m):
    assert run("1f1b", n, m).peak_activation_per_rank == tuple(float(n - r) for r in range(n))
    assert max(run("gpipe", n, m).peak_activation_per_rank) == m


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (4, 10), (8, 20), (8, 32), (6, 11)])
def test_zb_h1_bubble_is_n_minus_1_times_f_plus_i_minus_w(n, m):
    sim = run("zb-h1", n, m)
    assert sim.bubble_per_rank == pytest.approx([(n - 1) * (1 + 1 - 1)] * n)
    assert max(sim.peak_activation_per_rank) == n  # 1F1B's memory


@pytest.mark.parametrize("n,m", [(4, 8), (8, 20), (8, 24)])
def test_zb_h1_closed_form_with_w_not_above_f(n, m):
    # With W <= F and W <= I the delayed W's fit the cool-down and the formula holds exactly.
    sim = run("zb-h1", n, m, f=1.5, i=1.2, w=0.8)
    assert sim.max_bubble == pytest.approx((n - 1) * (1.5 + 1.2 - 0.8))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (4, 12), (6, 12), (8, 16), (8, 20), (8, 34)])
@pytest.mark.parametrize("fb", [3.0, 2.4])
def test_dualpipe_bubble_and_memory(n, m, fb):
    sim = run("dualpipe", n, m, fb=fb)
    formula = (n / 2 - 1) * (fb + 2 - 3)
    assert sim.max_bubble == pytest.approx(formula)
    if fb == 3.0:  # no overlap gain: every rank idles exactly that long
        assert sim.bubble_per_rank == pytest.approx([formula] * n)
    assert sim.peak_activation_per_rank == (n + 1.0,) * n
    assert sim.params_per_rank == (2.0,) * n  # every stage held twice


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (4, 10), (3, 9), (8, 16), (8, 20)])
@pytest.mark.parametrize("fb", [3.0, 2.4])
def test_dualpipev_bubble_and_memory(n, m, fb):
    sim = run("dualpipev", n, m, fb=fb)  # unit costs per stage chunk; PP = 2N stages
    formula = (2 * n / 2 - 1) * (fb + 2 - 3)
    assert sim.max_bubble == pytest.approx(formula)
    assert sim.peak_activation_per_rank == (2 * n + 1.0,) * n


@pytest.mark.parametrize("n,m", [(4, 10), (8, 20)])
def test_dualpipev_with_unequal_i_w_stays_within_the_formula(n, m):
    # Reference §1.3: with I=1.2, W=0.8 the formula overestimates slightly (W's fill part of it).
    sim = run("dualpipev", n, m, i=1.2, w=0.8)
    formula = (n - 1) * (3.0 + 2.0 - 3 * 0.8)
    assert 0.85 * formula < sim.max_bubble < formula


@pytest.mark.parametrize("n,m", [(4, 8), (8, 16), (8, 24), (4, 12)])
def test_interleaved_bubble_is_1f1b_bubble_over_v(n, m):
    # Chunk costs 1 per stage: (N-1)(F+B) in chunk units = 1F1B's bubble / v in rank-share units.
    sim = run("interleaved-1f1b", n, m)
    assert sim.bubble_per_rank == pytest.approx([(n - 1) * 3] * n)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 20)])
def test_zb_v_holds_1f1b_memory(n, m):
    # 2N chunk-activations = N rank-shares: the same as 1F1B's peak.
    assert max(run("zb-v", n, m).peak_activation_per_rank) == 2 * n


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 20), (8, 40)])
def test_zb_h2_reaches_the_one_chain_lower_bound(n, m):
    """At unit costs every rank idles N-1: the last rank cannot start before N-1 forwards pass."""
    sim = run("zb-h2", n, m)
    assert sim.bubble_per_rank == pytest.approx([n - 1] * n)
    assert max(sim.peak_activation_per_rank) <= 2 * n - 1
