from bench.__main__ import split_args


def test_push_options_are_taken_and_the_rest_goes_to_the_proxy_table() -> None:
    own, rest = split_args(["--quick", "--no-push", "--only", "haproxy,meshproxy"])
    assert own.no_push and not own.push_only
    assert rest == ["--quick", "--only", "haproxy,meshproxy"]


def test_push_runs_by_default_with_the_three_fleet_sizes() -> None:
    own, rest = split_args([])
    assert not own.no_push
    assert own.push_watchers == "10,100,1000"
    assert rest == []


def test_push_watchers_can_be_chosen() -> None:
    own, _ = split_args(["--push-only", "--push-watchers", "5,50"])
    assert own.push_only and own.push_watchers == "5,50"
