"""The traffic package's pure parts: the spec, arrivals, every batching policy, and the simulator against
hand-worked queueing cases (M/D/1, D/D/1, batching with a wait limit, continuous batching, a closed loop)."""

from __future__ import annotations

import numpy as np
import pytest

from bench_kernels.traffic.arrivals import (Request, piecewise_poisson_arrivals, poisson_arrivals,
                                            requests_at_rate, sample_lengths)
from bench_kernels.traffic.latency import keeps_up, summarize
from bench_kernels.traffic.policies import (Arrivals, ContinuousBatching, ShapeLimitedBatching, StaticBatching,
                                            make_policy)
from bench_kernels.traffic.simulator import StepCosts, highest_rate, predict_rate, simulate
from bench_kernels.traffic.spec import Batching, Lengths, check_runtimes, parse_traffic


def constant_costs(prefill_ms: float, decode_ms: float = 0.0) -> StepCosts:
    return StepCosts({(1, 128): prefill_ms}, {(1, 128): decode_ms})


def evenly(gap_s: float, count: int, input_len: int = 128, output_len: int = 1) -> list[Request]:
    return [Request(i, i * gap_s, input_len, output_len) for i in range(count)]


def test_spec_names_bad_keys_and_allowed_values() -> None:
    assert parse_traffic({}) is None
    spec = parse_traffic({"rate_per_s": 2, "batching": {"max_batch": 4}})
    assert spec.rate_per_s == [2.0] and spec.batching.max_batch == 4 and spec.load_rates_per_s == [2.0]
    with pytest.raises(ValueError, match=r"traffic\.arrivals: Input should be 'poisson', 'concurrency' or"):
        parse_traffic({"arrivals": "bursty"})
    with pytest.raises(ValueError, match=r"traffic\.lengths\.spread: unknown key \(allowed keys: kind, input_len"):
        parse_traffic({"rate_per_s": 1, "lengths": {"kind": "uniform", "spread": 3}})
    with pytest.raises(ValueError, match="arrivals 'day_profile' needs requests_per_hour"):
        parse_traffic({"arrivals": "day_profile"})
    with pytest.raises(ValueError, match=r"traffic\.rate_per_s: every value must be > 0, got \[0\.0\]"):
        parse_traffic({"rate_per_s": [0, 1]})
    day = parse_traffic({"arrivals": "day_profile", "requests_per_hour": [100, 10_000]})
    assert day.load_rates_per_s == pytest.approx([5050 / 3600, 10_000 / 3600])
    assert parse_traffic({"arrivals": "day_profile", "requests_per_hour": [100], "rate_per_s": [3, 1]}
                         ).load_rates_per_s == [1.0, 3.0]
    declared = {"reference": ("continuous", "static"), "compiled": ("shape_limited", "static")}
    problems = check_runtimes(parse_traffic({"rate_per_s": 1, "runtimes": ["tensorrt"],
                                             "policies": {"compiled": "continuous", "nope": "static"}}),
                              ["reference", "compiled"], declared)
    assert problems == ["traffic.runtimes: 'tensorrt' is not in the sweep's runtimes; allowed: reference, compiled",
                        "traffic.policies.compiled: compiled does not serve 'continuous'; allowed: shape_limited, "
                        "static", "traffic.policies.nope: unknown runtime; allowed: reference, compiled"]


def test_poisson_arrivals_have_their_rate_and_seed() -> None:
    times = poisson_arrivals(50.0, duration_s=200.0, max_requests=100_000, seed=3)
    assert len(times) == pytest.approx(50 * 200, rel=0.03)
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03) and gaps.std() == pytest.approx(1 / 50, rel=0.05)
    assert np.array_equal(times, poisson_arrivals(50.0, duration_s=200.0, max_requests=100_000, seed=3))
    assert not np.array_equal(times[:10], poisson_arrivals(50.0, duration_s=200.0, max_requests=10, seed=4))
    assert len(poisson_arrivals(50.0, duration_s=200.0, max_requests=7, seed=3)) == 7
    day = piecewise_poisson_arrivals([100.0, 10_000.0], seed=0, hour_s=36.0)  # a compressed two-hour "day"
    assert (day < 36).sum() == pytest.approx(100, abs=35) and (day >= 36).sum() == pytest.approx(10_000, rel=0.05)


def test_length_samplers(tmp_path) -> None:
    assert list(sample_lengths(Lengths(input_len=64), 3)) == [64, 64, 64]
    uniform = sample_lengths(Lengths(kind="uniform", min_len=10, max_len=20, seed=1), 2000)
    assert uniform.min() == 10 and uniform.max() == 20
    lognormal = sample_lengths(Lengths(kind="lognormal", mean_len=200, sigma=0.4, max_len=10_000, seed=1), 20_000)
    assert lognormal.mean() == pytest.approx(200, rel=0.03)
    path = tmp_path / "lengths.txt"
    path.write_text("# prompt tokens\n12\n\n40\n")
    drawn = sample_lengths(Lengths(kind="file", file=str(path)), 100)
    assert set(drawn) == {12, 40}
    path.write_text("12\nlots\n")
    with pytest.raises(ValueError, match="line 2: 'lots' is not a token count"):
        sample_lengths(Lengths(kind="file", file=str(path)), 1)
    spec = parse_traffic({"rate_per_s": 5, "duration_s": 10, "lengths": {"kind": "uniform", "max_len": 4000}})
    assert max(r.input_len for r in requests_at_rate(spec, 5, 8, max_input_len=100)) == 100


def test_md1_mean_wait_matches_the_formula() -> None:
    """M/D/1 at rho = 0.6: mean wait in queue W = rho / (2 mu (1 - rho))."""
    service_s, rate = 0.010, 60.0
    rho, mu = rate * service_s, 1 / service_s
    times = poisson_arrivals(rate, duration_s=1000.0, max_requests=100_000, seed=0)
    requests = [Request(i, float(t), 128, 1) for i, t in enumerate(times)]
    timings = simulate(Arrivals(requests), StaticBatching(Batching(max_batch=1, max_wait_ms=0)),
                       constant_costs(service_s * 1e3))
    wait_s = np.mean([t.first_token_s - t.arrival_s - service_s for t in timings])
    assert wait_s == pytest.approx(rho / (2 * mu * (1 - rho)), rel=0.06)


def test_dd1_queue_grows_by_the_service_excess() -> None:
    """D/D/1: arrivals every 10 ms; a 5 ms service never waits, a 15 ms one makes request k wait k * 5 ms."""
    one = StaticBatching(Batching(max_batch=1, max_wait_ms=0))
    fast = simulate(Arrivals(evenly(0.010, 50)), one, constant_costs(5.0))
    assert [t.ttft_ms for t in fast] == pytest.approx([5.0] * 50)
    slow = simulate(Arrivals(evenly(0.010, 50)), one, constant_costs(15.0))
    assert [t.ttft_ms for t in slow] == pytest.approx([15.0 + 5.0 * k for k in range(50)])
    assert summarize(slow)["achieved_rate_per_s"] == pytest.approx(50 / (49 * 0.010 + 15.0 * 50 / 1e3 - 49 * 0.010
                                                                        + 0.0), rel=1e-9)
    # One past saturation completes at its capacity (1 / 15 ms) while requests arrive at 100/s.
    assert summarize(slow)["completion_rate_per_s"] == pytest.approx(1 / 0.015)
    assert summarize(slow)["offered_rate_per_s"] == pytest.approx(100.0)
    assert keeps_up(summarize(fast)["completion_rate_per_s"], summarize(fast)["offered_rate_per_s"])
    assert not keeps_up(summarize(slow)["completion_rate_per_s"], summarize(slow)["offered_rate_per_s"])


def test_static_batching_waits_at_most_max_wait() -> None:
    """Arrivals at 0, 1, 2 ms: with room for 8 the batch leaves when the oldest has waited 10 ms; with room for 2
    it leaves full at 1 ms, and the third waits for the server, then up to 10 ms for company."""
    costs = StepCosts({(1, 128): 4.0, (8, 128): 11.0}, {(1, 129): 1.0, (8, 129): 1.0})
    requests = [Request(i, i / 1e3, 128, 2) for i in range(3)]
    roomy = simulate(Arrivals(requests), StaticBatching(Batching(max_batch=8, max_wait_ms=10)), costs)
    assert [t.first_token_s for t in roomy] == pytest.approx([0.010 + 0.006] * 3)  # prefill(3) = 4 + 2/7 * 7
    assert [t.ttft_ms for t in roomy] == pytest.approx([16.0, 15.0, 14.0])
    assert [t.last_token_s for t in roomy] == pytest.approx([0.017] * 3)
    pairs = simulate(Arrivals(requests), StaticBatching(Batching(max_batch=2, max_wait_ms=10)), costs)
    first_batch_done = 0.001 + (4.0 + 1 / 7 * 7) / 1e3 + 1.0 / 1e3  # launch 1 ms, prefill(2) 5 ms, one step 1 ms
    assert pairs[0].last_token_s == pytest.approx(first_batch_done)
    assert pairs[2].first_token_s == pytest.approx(0.002 + 0.010 + 0.004)  # its own wait outlasts the busy server


def test_shape_limited_pads_to_built_shapes_and_rebuilds_outside() -> None:
    policy = ShapeLimitedBatching(Batching(max_batch=16), [1, 4, 8], [128, 1024], pads=True)
    assert policy.batch_limit == 8
    batch = [Request(i, 0.0, n, 4) for i, n in enumerate([100, 20, 7])]
    assert policy.shape(batch).__dict__ == {"batch_size": 4, "input_len": 128, "rebuild": False}
    long = [Request(0, 0.0, 2000, 4)]
    assert policy.shape(long).rebuild and not policy.shape(long).rebuild  # built once, then in range
    ranges = ShapeLimitedBatching(Batching(max_batch=8), [1, 8], [128, 1024], pads=False)
    assert ranges.shape(batch).__dict__ == {"batch_size": 3, "input_len": 100, "rebuild": False}
    costs = StepCosts({(1, 128): 10.0, (1, 2048): 10.0}, {(1, 128): 1.0, (1, 2048): 1.0}, rebuild_s=60.0)
    rebuilt = simulate(Arrivals([Request(0, 0.0, 2000, 1), Request(1, 100.0, 2000, 1)]),
                       make_policy("shape_limited", Batching(max_batch=1, max_wait_ms=0), built_batch_sizes=[1],
                                   built_input_lens=[128], pads=False), costs)
    assert [t.ttft_ms for t in rebuilt] == pytest.approx([60_010.0, 10.0])


def test_continuous_batching_joins_at_the_next_step() -> None:
    """A at 0 ms, B at 10.5 ms, 3 tokens each, prefill 10 ms, a decode step 1 ms: A's first token at 10, its second
    at 11; B joins the next step, which prefills B and decodes A (11 ms): A's last and B's first at 22, B's last
    after two more steps at 24."""
    costs = StepCosts({(1, 128): 10.0}, {(1, 128): 1.0})
    timings = simulate(Arrivals([Request(0, 0.0, 128, 3), Request(1, 0.0105, 128, 3)]),
                       ContinuousBatching(Batching(max_batch=4)), costs)
    by_index = {t.index: t for t in timings}
    assert (by_index[0].first_token_s, by_index[0].last_token_s) == pytest.approx((0.010, 0.022))
    assert (by_index[1].first_token_s, by_index[1].last_token_s) == pytest.approx((0.022, 0.024))
    assert by_index[1].batch_size == 2
    solo = simulate(Arrivals([Request(0, 0.0, 128, 3), Request(1, 0.0105, 128, 3)]),
                    ContinuousBatching(Batching(max_batch=1)), costs)
    assert {t.index: t.first_token_s for t in solo}[1] == pytest.approx(0.012 + 0.010)


def test_closed_loop_keeps_concurrency_requests_in_flight() -> None:
    """Concurrency 2, service 10 ms one at a time: requests run back to back, throughput 1 / service."""
    requests = [Request(i, 0.0, 128, 1) for i in range(20)]
    timings = simulate(Arrivals(requests, concurrency=2), StaticBatching(Batching(max_batch=1, max_wait_ms=0)),
                       constant_costs(10.0))
    assert len(timings) == 20 and timings[-1].last_token_s == pytest.approx(0.200)
    assert summarize(timings)["achieved_rate_per_s"] == pytest.approx(100.0)
    assert max(t.ttft_ms for t in timings) == pytest.approx(20.0)  # one ahead at most


def test_step_costs_interpolate_and_flag_extrapolation() -> None:
    costs = StepCosts({(1, 128): 10.0, (1, 1024): 100.0, (8, 128): 30.0, (8, 1024): 200.0}, {(1, 128): 1.0})
    assert costs.prefill(4, 576) == pytest.approx(55 + 3 / 7 * 60)
    assert not costs.extrapolated
    assert costs.prefill(16, 128) == pytest.approx(30 + 20 / 7 * 8)
    costs.prefill(12, 128)
    costs.decode(1, 4096)
    assert costs.extrapolated == ["decode length 4096 beyond measured 128-128 at batch 1",
                                  "prefill batch 12-16 beyond measured 1-8"]


def test_highest_rate_finds_the_md1_limit() -> None:
    """M/D/1 with service 10 ms and a p99 TTFT target far above it: the highest rate stays below mu = 100/s and
    above the rate whose mean wait alone reaches the target."""
    spec = parse_traffic({"rate_per_s": 1})
    policy = lambda: StaticBatching(Batching(max_batch=1, max_wait_ms=0))  # noqa: E731
    rate = highest_rate(lambda r: predict_rate(lambda x: requests_at_rate(spec, x, 1, count=5000), policy,
                                               constant_costs(10.0), r, ttft_ms=100.0),
                        ttft_ms=100.0, tpot_ms=None, iterations=14)
    assert 60 < rate < 100


def test_percentile_note_counts_the_tail() -> None:
    from bench_kernels.traffic.latency import percentile_note

    assert percentile_note(1000, 60.0) == "p99 rests on the 10 slowest of 1000 requests; 60 s of 600 s MLPerf's " \
                                          "Server scenario runs at least"
