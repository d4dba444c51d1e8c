"""wrk's report read into numbers, from reports captured on this machine."""

from pathlib import Path

import pytest

from bench.wrk import WrkError, parse_wrk, wrk_command

DATA = Path(__file__).parent / "data"


def test_clean_report_gives_rate_percentiles_in_ms_and_no_errors() -> None:
    result = parse_wrk((DATA / "wrk_haproxy.txt").read_text())
    assert result.requests_per_s == 30138.97
    assert result.requests == 60405
    assert result.p50_ms == pytest.approx(0.94)
    assert result.p99_ms == pytest.approx(3.02)
    assert (result.non_2xx, result.socket_errors, result.has_errors) == (0, 0, False)


def test_microsecond_percentiles_are_converted_and_socket_errors_summed() -> None:
    result = parse_wrk((DATA / "wrk_socket_errors.txt").read_text())
    assert result.p50_ms == pytest.approx(0.114)
    assert result.p99_ms == pytest.approx(0.409)
    assert result.socket_errors == 14541
    assert result.has_errors


def test_non_2xx_responses_flag_the_run() -> None:
    result = parse_wrk((DATA / "wrk_non2xx.txt").read_text())
    assert result.non_2xx == 1187
    assert result.socket_errors == 0
    assert result.has_errors


def test_seconds_in_the_distribution_are_converted() -> None:
    text = (DATA / "wrk_haproxy.txt").read_text().replace("99%    3.02ms", "99%    1.50s")
    assert parse_wrk(text).p99_ms == pytest.approx(1500.0)


def test_report_without_latency_distribution_is_refused() -> None:
    lines = (DATA / "wrk_haproxy.txt").read_text().splitlines()
    text = "\n".join(line for line in lines if "%  " not in line or "Latency" in line)
    with pytest.raises(WrkError, match="--latency"):
        parse_wrk(text)


def test_output_that_is_not_a_report_is_refused() -> None:
    with pytest.raises(WrkError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_command_has_one_thread_latency_and_the_host_header() -> None:
    cmd = wrk_command(
        "http://127.0.0.1:1/", connections=32, duration_s=5, headers={"Host": "origin"}
    )
    assert cmd == [
        "wrk", "-t1", "-c32", "-d5s", "--latency", "-H", "Host: origin", "http://127.0.0.1:1/"
    ]  # fmt: skip
