"""The reproduction's stage graph and its scheduler: which stages a config runs, and in which order
the workers take them (the longest chain of stages behind a stage first)."""
from __future__ import annotations

import pytest

from defense.reproduce.config import ReproConfig
from defense.reproduce.pipeline import STAGE_NAMES, STAGE_SECONDS, STAGES, stages_for
from defense.reproduce.runner import Stage, chain_seconds, ready_tasks


def test_stages_for_leave_out_the_competitors_the_config_leaves_out():
    assert stages_for(ReproConfig()) == STAGES  # so every stage key of a default run stays
    stages = stages_for(ReproConfig(trained_competitors=("hgd",)))
    names = [s.name for s in stages]
    assert names == [n for n in STAGE_NAMES if n not in ("train_prn", "train_fd")]
    evaluate = stages[-1]
    assert evaluate.name == "evaluate" and "train_hgd" in evaluate.upstream
    assert not {"train_prn", "train_fd"} & set(evaluate.upstream)
    assert [s.name for _, s in ready_tasks(stages, 1, {(0, n) for n in names[:-1]}, set())] == ["evaluate"]
    with pytest.raises(ValueError, match="trained_competitors lists each of prn, hgd, fd at most once, got pgd"):
        ReproConfig(trained_competitors=("pgd",))
    with pytest.raises(ValueError, match="got hgd,hgd"):
        ReproConfig().with_overrides(["trained_competitors=hgd,hgd"])
    assert ReproConfig().with_overrides(["trained_competitors="]).trained_competitors == ()


def test_chain_seconds_add_the_longest_chain_behind_each_stage():
    chain = chain_seconds(STAGES)
    sec = STAGE_SECONDS
    assert chain["evaluate"] == sec["evaluate"] and chain["masking"] == sec["masking"]
    assert chain["train_fru"] == pytest.approx(sec["train_fru"] + sec["secondary"] + sec["evaluate"])
    assert chain["baseline"] == pytest.approx(sec["baseline"] + sec["train_attacks"] + chain["train_fru"])
    toy = [Stage("a", None, (), seconds=1), Stage("b", None, (), ("a",), seconds=5), Stage("c", None, (), ("a",), seconds=2),
           Stage("d", None, (), ("b", "c"), seconds=3)]
    assert chain_seconds(toy) == {"a": 9, "b": 8, "c": 5, "d": 3}


def test_stages_come_after_their_upstream_and_each_has_a_measured_time():
    seen = set()
    for stage in STAGES:
        assert set(stage.upstream) <= seen, stage.name
        seen.add(stage.name)
    assert set(STAGE_SECONDS) == seen and all(s.seconds == STAGE_SECONDS[s.name] > 0 for s in STAGES)


def test_ready_stages_wait_for_upstream_the_longest_chain_first():
    def names(done, running=()):
        tasks = ready_tasks(STAGES, 1, {(0, n) for n in done}, {(0, n) for n in running})
        assert {r for r, _ in tasks} <= {0}
        return [s.name for _, s in tasks]
    assert names(set()) == ["baseline"]
    assert names({"baseline"}) == ["train_attacks", "generate", "test_attacks"]
    done = {"baseline", "train_attacks", "generate"}
    # FD's training, the longest stage, right after the FRUs' (the chain to the secondary defence)
    assert names(done, {"test_attacks"}) == ["train_fru", "train_fd", "train_hgd", "train_prn", "ranking", "peers"]
    done |= {"train_fru", "test_attacks"}
    assert names(done, {"ranking"}) == ["train_fd", "secondary", "train_hgd", "train_prn", "adaptive", "peers", "masking"]
    done |= {"ranking", "masking", "peers", "secondary"}
    assert names(done) == ["train_fd", "train_hgd", "train_prn", "adaptive"]
    done |= {"train_prn", "train_hgd", "train_fd"}
    assert names(done) == ["adaptive"]
    done |= {"adaptive"}
    assert names(done) == ["evaluate"]
    assert names(done, {"evaluate"}) == []


def test_replicas_share_the_pool_stage_by_stage_each_waiting_for_its_own_upstream():
    pairs = lambda tasks: [(r, s.name) for r, s in tasks]  # noqa: E731
    assert pairs(ready_tasks(STAGES, 3, set(), set())) == [(0, "baseline"), (1, "baseline"), (2, "baseline")]
    # seed 1's baseline done: only seed 1's next stages, never another replica's
    assert pairs(ready_tasks(STAGES, 2, {(1, "baseline")}, {(0, "baseline")})) == [
        (1, "train_attacks"), (1, "generate"), (1, "test_attacks")]
    done = {(r, n) for r in (0, 1) for n in ("baseline", "train_attacks", "generate")}
    assert pairs(ready_tasks(STAGES, 2, done, {(0, "test_attacks")}))[:3] == [
        (0, "train_fru"), (1, "train_fru"), (0, "train_fd")]
