"""The first generation's wait for its seeded template: a first budget, then steps while the
template uses the CPU, never past the cap; none at all for a template that is a poor bet."""

from __future__ import annotations

import os
import sys

import pytest

from grace_plugins.first_wait import MIN_CPU, STEP, FirstWait, cpu_seconds
from grace_plugins.preload import poor_bet


def held(cpu: float | None = 1.0) -> FirstWait:
    return FirstWait(request=None, deadline=2.0, cap=10.0, cpu=cpu)  # type: ignore[arg-type]


def test_a_template_that_used_the_cpu_since_the_last_look_gets_one_more_step():
    wait = held()
    assert wait.goes_on(2.0, 1.0 + MIN_CPU)
    assert (wait.deadline, wait.cpu) == (2.0 + STEP, 1.0 + MIN_CPU)


def test_a_template_that_used_almost_no_cpu_is_given_up_on():
    assert not held().goes_on(2.0, 1.0 + MIN_CPU / 2)


def test_the_cap_ends_the_wait_and_the_last_step_stops_at_it():
    wait = held()
    assert wait.goes_on(9.5, 5.0) and wait.deadline == 10.0
    assert not wait.goes_on(10.0, 9.0)


@pytest.mark.parametrize("before, now", [(None, 5.0), (1.0, None)])
def test_an_unknown_cpu_time_ends_the_wait_at_the_first_budget(before, now):
    assert not held(before).goes_on(2.0, now)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_cpu_seconds_reads_a_live_process_and_none_for_a_gone_one():
    spent = cpu_seconds(os.getpid())
    assert spent is not None and spent > 0
    sum(range(3_000_000))  # some CPU
    assert cpu_seconds(os.getpid()) > spent  # type: ignore[operator]
    assert cpu_seconds(2**22 + 7) is None  # above pid_max's default


@pytest.mark.parametrize(
    "left, tried, poor",
    [
        (18, 676, False),  # the site with admin: Django's contrib models read the settings
        (30, 243, False),  # a site with every contrib app: its template is ready in 0.4 s
        (49, 50, False),  # too few to matter, however early
        (50, 250, False),  # a fifth: still a good bet
        (50, 249, True),
        (478, 895, True),  # a generated CMS site
    ],
)
def test_a_template_leaving_out_many_imports_and_a_fifth_of_those_tried_is_a_poor_bet(
    left, tried, poor
):
    assert poor_bet(left, tried) is poor
