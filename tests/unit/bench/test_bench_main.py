import pytest

from bench.__main__ import STAGES, StageError, plan, select_stages, split_args


def test_every_stage_runs_by_default_in_order() -> None:
    assert plan([]).stages == ("proxy", "parser", "push", "scheduler")
    assert STAGES == ("proxy", "parser", "push", "scheduler")


def test_stage_options_are_taken_and_the_rest_goes_to_the_proxy_table() -> None:
    own, rest = split_args(["--quick", "--no-push", "--only", "haproxy,meshproxy"])
    assert own.no_push and not own.push_only and own.quick
    assert rest == ["--quick", "--only", "haproxy,meshproxy"]


def test_each_stage_can_be_skipped_on_its_own() -> None:
    for stage in STAGES:
        own, _ = split_args([f"--no-{stage}"])
        assert select_stages(own) == tuple(s for s in STAGES if s != stage)


def test_stages_list_runs_only_those_in_the_fixed_order() -> None:
    own, _ = split_args(["--stages", "scheduler, parser"])
    assert select_stages(own) == ("parser", "scheduler")


def test_no_flag_removes_a_stage_from_the_stages_list() -> None:
    own, _ = split_args(["--stages", "parser,push", "--no-push"])
    assert select_stages(own) == ("parser",)


def test_push_only_runs_the_push_stage_alone() -> None:
    own, _ = split_args(["--push-only", "--push-watchers", "5,50"])
    assert select_stages(own) == ("push",)
    assert plan(["--push-only", "--push-watchers", "5,50"]).push_args == ("--watchers", "5,50")


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--stages", "proxy,disk"], "unknown stage(s) disk"),
        (["--push-only", "--no-push"], "exclude each other"),
        (["--push-only", "--stages", "push"], "exclude each other"),
        (["--stages", "parser", "--no-parser"], "no stage left"),
        (["--stages", "parser", "--only", "nginx"], "no proxy stage"),
    ],
)
def test_contradicting_stage_options_are_refused(argv: list[str], reason: str) -> None:
    with pytest.raises(StageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        plan(argv)


def test_quick_shortens_every_stage_and_reaches_the_proxy_table() -> None:
    full, quick = plan([]), plan(["--quick"])
    assert quick.proxy_args == ("--quick",)
    assert quick.parser_rounds < full.parser_rounds
    assert quick.parser_seconds < full.parser_seconds
    assert full.push_args == ("--watchers", "10,100,1000")
    assert quick.push_args == ("--watchers", "10,100", "--writes", "1")
    assert full.scheduler_args == ()
    assert quick.scheduler_args == ("--rounds", "1", "--pods", "1000", "--nodes", "500")


def test_quick_with_chosen_push_watchers_keeps_them() -> None:
    assert plan(["--quick", "--push-watchers", "3"]).push_args == (
        "--watchers",
        "3",
        "--writes",
        "1",
    )
