import pytest

from control.state import DesiredState, StateError, check_state, parse_resource


def _policy(name: str = "ratings", subsets: tuple[str, ...] = ("v1",)) -> object:
    body = {"subsets": {s: {"labels": {"version": s}} for s in subsets}}
    return parse_resource("policies", name, body)


def test_body_may_omit_service_and_takes_it_from_the_path() -> None:
    table = parse_resource("routes", "ratings", {"rules": [{"backends": [{"subset": "v1"}]}]})
    assert table.service == "ratings"


def test_body_naming_another_service_than_the_path_is_refused() -> None:
    with pytest.raises(StateError) as err:
        parse_resource("routes", "ratings", {"service": "reviews", "rules": []})
    assert err.value.problems[0][0] == "service"


def test_invalid_body_names_the_field_path() -> None:
    with pytest.raises(StateError) as err:
        parse_resource("routes", "ratings", {"rules": [{"backends": [{"weight": -1}]}]})
    assert err.value.problems[0][0] == "rules.0.backends.0.weight"


def test_route_to_unknown_subset_is_refused_with_its_field_path() -> None:
    state = DesiredState().with_resource("policies", "ratings", _policy())  # type: ignore[arg-type]
    table = parse_resource("routes", "ratings", {"rules": [{"backends": [{"subset": "v2"}]}]})
    state = state.with_resource("routes", "ratings", table)
    with pytest.raises(StateError) as err:
        check_state(state, set())
    assert err.value.problems[0][0] == "routes.ratings.rules.0.backends.0.subset"
    assert "'v2'" in err.value.problems[0][1]


def test_backend_to_unknown_service_is_refused_but_a_registered_one_is_fine() -> None:
    body = {"rules": [{"backends": [{"service": "ratings-next"}]}]}
    state = DesiredState().with_resource(
        "routes", "ratings", parse_resource("routes", "ratings", body)
    )
    with pytest.raises(StateError) as err:
        check_state(state, set())
    assert err.value.problems[0][0] == "routes.ratings.rules.0.backends.0.service"
    check_state(state, {"ratings-next"})


def _with_route(state: DesiredState, name: str, body: dict[str, object]) -> DesiredState:
    return state.with_resource("routes", name, parse_resource("routes", name, body))


def test_mirror_to_an_unknown_subset_is_refused_at_the_mirror_field() -> None:
    state = DesiredState().with_resource("policies", "ratings", _policy())  # type: ignore[arg-type]
    state = _with_route(
        state, "ratings", {"rules": [{"backends": [{"subset": "v1"}], "mirror": {"subset": "v9"}}]}
    )
    with pytest.raises(StateError) as err:
        check_state(state, set())
    assert err.value.problems == [
        (
            "routes.ratings.rules.0.mirror.subset",
            "unknown subset 'v9' of service 'ratings' (known: v1)",
        )
    ]


def test_mirror_to_an_unknown_service_is_refused_but_a_registered_one_is_fine() -> None:
    state = _with_route(DesiredState(), "ratings", {"rules": [{"mirror": {"service": "shadow"}}]})
    with pytest.raises(StateError) as err:
        check_state(state, set())
    assert [w for w, _ in err.value.problems] == ["routes.ratings.rules.0.mirror.service"]
    check_state(state, {"shadow"})


def test_every_problem_is_named_by_the_service_of_its_route_table() -> None:
    state = DesiredState().with_resource("policies", "zeta", _policy("zeta"))  # type: ignore[arg-type]
    state = _with_route(state, "alpha", {"rules": [{"backends": [{"subset": "v1"}]}]})
    state = _with_route(state, "zeta", {"rules": [{"backends": [{"subset": "v2"}]}]})
    with pytest.raises(StateError) as err:
        check_state(state, set())
    assert [w for w, _ in err.value.problems] == [
        "routes.alpha.rules.0.backends.0.subset",
        "routes.zeta.rules.0.backends.0.subset",
    ]


def test_a_state_that_fits_together_passes() -> None:
    state = DesiredState().with_resource(
        "policies",
        "ratings",
        _policy("ratings", ("v1", "v2")),  # type: ignore[arg-type]
    )
    body = {
        "rules": [
            {
                "backends": [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 10}],
                "mirror": {"subset": "v2", "percent": 5},
            }
        ]
    }
    check_state(_with_route(state, "ratings", body), set())


def test_state_round_trips_through_json_with_durations_and_aliases() -> None:
    table = parse_resource(
        "routes", "ratings", {"rules": [{"backends": [{"subset": "v1"}], "timeout": "250ms"}]}
    )
    access = parse_resource(
        "access", "ratings", {"action": "allow", "rules": [{"from": {"services": ["reviews"]}}]}
    )
    state = (
        DesiredState()
        .with_resource("policies", "ratings", _policy())  # type: ignore[arg-type]
        .with_resource("routes", "ratings", table)
        .with_resource("access", "ratings", access)
    )
    again = DesiredState.from_json(state.to_json())
    assert again == state
    assert again.routes["ratings"].rules[0].timeout == 0.25
    assert '"from"' in state.to_json()


def test_with_resource_none_removes_and_leaves_the_original_untouched() -> None:
    state = DesiredState().with_resource("policies", "ratings", _policy())  # type: ignore[arg-type]
    emptied = state.with_resource("policies", "ratings", None)
    assert emptied.policies == {}
    assert set(state.policies) == {"ratings"}
