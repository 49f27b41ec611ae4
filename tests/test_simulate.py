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


def test_verdicts_name_what_is_worse_and_which_kind_of_loss_it_is():
    rows = {"ours": {"p99_s": 10.0, "usd_on_demand": 1.0}, "cheap": {"p99_s": 20.0, "usd_on_demand": 0.5},
            "fast": {"p99_s": 1.0, "usd_on_demand": 2.0}, "both": {"p99_s": 1.0, "usd_on_demand": 0.5},
            "same": {"p99_s": 10.1, "usd_on_demand": 1.0}, "as fast, cheaper": {"p99_s": 10.0, "usd_on_demand": 0.9},
            "faster, as cheap": {"p99_s": 9.0, "usd_on_demand": 1.005}}
    judged = simulate.verdicts(rows, "ours")
    assert {peer: v.kind for peer, v in judged.items()} == {
        "cheap": "trade", "fast": "trade", "both": "dominated", "same": "", "as fast, cheaper": "dominated",
        "faster, as cheap": "dominated"}
    assert judged["cheap"].words == "dearer (+100.0%), p99 2.0x shorter"
    assert judged["fast"].words == "slower p99, 2.00x cheaper"
    assert judged["both"].words == "slower p99 and dearer"
    # Slower than a peer whose p99 no policy from zero could reach: a loss of its own kind.
    from_zero = simulate.verdicts(rows, "ours", floor=8.0)
    assert from_zero["fast"] == simulate.Verdict(
        "from zero", "slower p99: no policy from zero can be as fast (p99 >= 8.0 s)")
    assert from_zero["both"].kind == "dominated"  # its p99 is out of reach from zero, its cost is not
    assert from_zero["faster, as cheap"].kind == "dominated"  # its 9 s is above the floor: within reach


@pytest.mark.parametrize("boot", (5.0, 120.0))
def test_no_policy_from_zero_has_a_p99_under_the_floor_and_a_fleet_booted_before_can(boot):
    seed = Trace("seed", [(0.0, 10), (600.0, 30)], 1200.0)
    for trace in (BURSTS, seed, simulate.poisson("short", lambda t: 20.0, 900.0, seed=1)):
        floor = simulate.from_zero_floor(trace, boot, RATE)
        for policy in (BootAware(), PerMessage(), KedaLike(), SageMakerLike()):
            assert simulate.simulate(trace, policy, boot, RATE)["p99_s"] >= floor - 1e-9, (trace.name, policy.name)
    for trace in (BURSTS, seed):  # a third of their images come at once, at the start
        assert simulate.from_zero_floor(trace, boot, RATE) >= boot - 1
        assert simulate.simulate(trace, FixedFleet(), boot, RATE)["p99_s"] < 1


def test_the_floor_is_the_boot_s_wait_and_the_work_of_each_message():
    # 100 images at once and 100 more a boot later: half wait the boot; all take a message's work.
    trace = Trace("two", [(0.0, 100), (130.0, 100)], 300.0)
    assert simulate.from_zero_floor(trace, 120.0, RATE) == pytest.approx(120.0 + 10 / RATE)
    assert simulate.from_zero_floor(Trace("late", [(0.0, 1), (130.0, 200)], 300.0), 120.0, RATE) == (
        pytest.approx(10 / RATE))


def test_the_model_of_one_worker_matches_the_measured_elastic_run():
    """Issue 19: simulated and measured time to the last label of the scaling bench's elastic
    100-image run (docs/scaling.json, `python -m daas bench scaling`) agree within 20%."""
    measured = json.loads((Path(simulate.DOCS) / "scaling.json").read_text())
    check = simulate.check_against(measured)
    assert 0.8 <= check["ratio"] <= 1.2, check


def test_the_report_prices_and_prints_every_trace(tmp_path):
    trace = Trace("tiny", [(0.0, 30), (100.0, 10)], 300.0)
    block = simulate.compared(trace, 60.0, RATE, simulate.PRICES)
    rows = block["rows"]
    report = {"rate_images_per_s": RATE, "prices": simulate.PRICES, "maximum_workers": simulate.MAXIMUM,
              "traces": [block], "losses": simulate.losses([block]),
              "tuning": [{"drain_target_s": 15.0, "work_per_boot": 3.0, "usd_on_demand": 1.0, "comparisons_lost": 0}],
              "chosen": {"drain_target_s": 15.0, "work_per_boot": 3.0}}
    text = simulate.format_report(report)
    assert "tiny" in text and "fixed fleet (peak)" in text and "chosen: 15 s, 3.0" in text
    # The fixed fleet, booted before the trace, is the one peer whose p99 no policy from zero reaches.
    assert block["loss_kinds"]["fixed fleet (peak)"] == "from zero"
    assert "no policy from zero has a p99 under 60.2 s" in text
    assert f"in {report['losses']['lost']} of 4 comparisons: {report['losses']['from zero']} where no policy" in text
    assert rows[BootAware.name]["images_per_usd"] == pytest.approx(
        40 / (rows[BootAware.name]["instance_hours"] * simulate.PRICES["on_demand_per_h"]))
    simulate.plot(report, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_the_policys_constants_are_the_ones_the_simulators_table_chose():
    from daas import config, scaling

    chosen = json.loads((Path(simulate.DOCS) / "simulate.json").read_text())["chosen"]
    assert (chosen["drain_target_s"], chosen["work_per_boot"]) == (
        config.Settings().scale_drain_target, scaling.WORK_PER_BOOT)
