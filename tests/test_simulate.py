"""The scaling simulator (daas.bench.simulate): its model, its peers and its verdicts, on simulated time."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daas.bench import simulate
from daas.bench.simulate import BootAware, FixedFleet, KedaLike, PerMessage, SageMakerLike, Trace

RATE = 60.0  # images/s one worker classifies
BURSTS = next(t for t in simulate.traces() if t.name.startswith("original client"))


def test_a_single_upload_takes_a_boot_then_its_work():
    result = simulate.simulate(Trace("one", [(0.0, 100)], 0.0), BootAware(), boot=120.0, rate=RATE)
    # From zero: one worker (0 -> 1) is enough for 10 tasks; it boots, works 100/60 s, idles a minute.
    assert result["launches"] == 1 and result["images"] == 100
    assert result["last_label_s"] == pytest.approx(120.0 + 100 / RATE)
    assert result["instance_hours"] * 3600 == pytest.approx(120.0 + 100 / RATE + simulate.IDLE_TIMEOUT)


@pytest.mark.parametrize("boot", simulate.BOOTS)
def test_the_boot_aware_policy_launches_a_fraction_of_the_old_one_for_the_same_latency(boot):
    new = simulate.simulate(BURSTS, BootAware(), boot, RATE)
    old = simulate.simulate(BURSTS, PerMessage(), boot, RATE)
    assert new["launches"] * 5 <= old["launches"]
    assert new["instance_hours"] * 5 <= old["instance_hours"]
    assert new["p99_s"] <= old["p99_s"] + 1.0


def test_every_policy_labels_every_image_and_ends_its_workers():
    trace = simulate.poisson("short", lambda t: 20.0, 600.0, seed=1)
    for policy in (BootAware(), PerMessage(), KedaLike(), SageMakerLike(), FixedFleet()):
        result = simulate.simulate(trace, policy, 60.0, RATE)
        assert result["images"] == trace.images, policy.name
        assert result["p99_s"] >= result["p50_s"] >= 0


def test_a_steady_stream_keeps_the_workers_it_needs_once_the_surplus_retires():
    # 100 images a second against 60 a worker: two workers keep up. The boot-aware policy launches a
    # third to work off what piled up during the first boot; then the three share the stream (SQS
    # hands each message to any waiting poll), busy enough never to idle out, and only the
    # controller's surplus retirement brings them back to two.
    trace = next(t for t in simulate.traces() if t.name.startswith("Poisson 100"))
    new = simulate.simulate(trace, BootAware(), 5.0, RATE)
    assert new["launches"] == 3 and new["instance_hours"] <= 2.2 and new["p99_s"] < 5.0
    kept = simulate.simulate(trace, BootAware(surplus_busy=None), 5.0, RATE)
    assert kept["instance_hours"] >= 2.9
    # The old policy launches many more, and none of them idles out either.
    assert simulate.simulate(trace, PerMessage(), 5.0, RATE)["instance_hours"] > 5 * new["instance_hours"]


def test_a_batch_after_a_trickle_of_single_images_is_measured_in_full_tasks():
    # A worker that served one-image tasks reads ten times faster in tasks a second; the policy
    # must still see that 3,000 images take one worker 50 s and launch more (boots of 5 s).
    trickle = [(float(t), 1) for t in range(120)]
    trace = Trace("trickle then batch", trickle + [(120.5, 3000)], 300.0)
    result = simulate.simulate(trace, BootAware(), 5.0, RATE)
    assert result["launches"] >= 2 and result["last_label_s"] < 120.5 + 40


def test_the_constants_chosen_lose_fewest_then_cost_within_one_percent_then_the_lowest_p99s():
    row = lambda name, lost, usd, p99: {"name": name, "comparisons_lost": lost, "usd_on_demand": usd, "p99_sum_s": p99}
    table = [row("most lost", 3, 0.5, 1.0), row("cheapest", 2, 1.0, 100.0), row("as cheap, faster", 2, 1.005, 50.0),
             row("dearer, fastest", 2, 1.2, 10.0)]
    assert simulate.chosen(table)["name"] == "as cheap, faster"


def test_the_fixed_fleet_is_billed_from_its_launch_a_boot_before_the_trace():
    result = simulate.simulate(Trace("one", [(0.0, 10)], 600.0), FixedFleet(), boot=120.0, rate=RATE)
    assert result["p99_s"] == pytest.approx(10 / RATE)  # no image waits for its boot
    assert result["instance_hours"] * 3600 == pytest.approx(120.0 + 600.0)


def test_verdicts_name_what_is_worse():
    rows = {"ours": {"p99_s": 10.0, "usd_on_demand": 1.0}, "cheap": {"p99_s": 20.0, "usd_on_demand": 0.5},
            "fast": {"p99_s": 1.0, "usd_on_demand": 2.0}, "both": {"p99_s": 1.0, "usd_on_demand": 0.5},
            "same": {"p99_s": 10.1, "usd_on_demand": 1.0}}
    assert simulate.verdicts(rows, "ours") == {"cheap": "dearer", "fast": "slower p99",
                                               "both": "slower p99 and dearer", "same": ""}


def test_the_model_of_one_worker_matches_the_measured_elastic_run():
    """Issue 19: simulated and measured time to the last label of the scaling bench's elastic
    100-image run (docs/scaling.json, `python -m daas bench scaling`) agree within 20%."""
    measured = json.loads((Path(simulate.DOCS) / "scaling.json").read_text())
    check = simulate.check_against(measured)
    assert 0.8 <= check["ratio"] <= 1.2, check


def test_the_report_prices_and_prints_every_trace(tmp_path):
    trace = Trace("tiny", [(0.0, 30), (100.0, 10)], 300.0)
    rows = {p.name: simulate.priced(simulate.simulate(trace, p, 60.0, RATE), trace, simulate.PRICES)
            for p in simulate.policies()}
    report = {"rate_images_per_s": RATE, "prices": simulate.PRICES, "maximum_workers": simulate.MAXIMUM,
              "traces": [{"trace": trace.name, "images": trace.images, "boot_s": 60.0, "rows": rows,
                          "not_better_than": simulate.verdicts(rows, BootAware.name)}],
              "tuning": [{"drain_target_s": 15.0, "work_per_boot": 3.0, "usd_on_demand": 1.0, "comparisons_lost": 0}],
              "chosen": {"drain_target_s": 15.0, "work_per_boot": 3.0}}
    text = simulate.format_report(report)
    assert "tiny" in text and "fixed fleet (peak)" in text and "chosen: 15 s, 3.0" in text
    assert rows[BootAware.name]["images_per_usd"] == pytest.approx(
        40 / (rows[BootAware.name]["instance_hours"] * simulate.PRICES["on_demand_per_h"]))
    simulate.plot(report, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_the_policys_constants_are_the_ones_the_simulators_table_chose():
    from daas import config, scaling

    chosen = json.loads((Path(simulate.DOCS) / "simulate.json").read_text())["chosen"]
    assert (chosen["drain_target_s"], chosen["work_per_boot"]) == (
        config.Settings().scale_drain_target, scaling.WORK_PER_BOOT)
