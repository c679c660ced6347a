"""The relay's answers as the console's pages show them (pure)."""

from __future__ import annotations

from gateway.console import views
from gateway.core.identity import AdminRole, Peer, Role
from gateway.proto.control_pb2 import (
    GetMetricsResponse,
    JobInfo,
    ListSitesResponse,
    MetricPoint,
    RelayInfo,
    SiteInfo,
    SiteStatus,
)

LEAD = Peer("lead@x", Role.ADMIN, admin_role=AdminRole.PROJECT_ADMIN)
MEMBER = Peer("member@x", Role.ADMIN, admin_role=AdminRole.MEMBER)


def _job(**fields: object) -> JobInfo:
    base: dict[str, object] = {
        "job_id": "j1",
        "name": "quickstart",
        "state": "running",
        "sites": ["site-1", "site-2"],
        "submitted_by": "lead@x",
        "created": 1000.0,
        "updated": 1010.0,
        "round": 2,
        "rounds": 4,
    }
    base.update(fields)
    return JobInfo(**base)  # type: ignore[arg-type]


def test_a_running_job_shows_its_progress_and_lasts_until_now() -> None:
    view = views.job_view(_job(), LEAD, now=1100.0)
    assert view["progress"] == 0.5
    assert view["duration_s"] == 100.0
    assert view["ended"] is False
    assert view["result"] is None


def test_an_ended_job_lasted_until_its_last_update_and_shows_its_result() -> None:
    view = views.job_view(
        _job(state="finished", result_json='{"loss": 0.5}', round=4), LEAD, now=5000.0
    )
    assert view["duration_s"] == 10.0
    assert view["ended"] is True
    assert view["result"] == {"loss": 0.5}
    assert view["progress"] == 1.0


def test_progress_is_unknown_until_the_rounds_are() -> None:
    assert views.job_view(_job(round=0, rounds=0), LEAD, now=1001.0)["progress"] is None


def test_a_member_may_manage_only_its_own_jobs_a_project_admin_any() -> None:
    theirs = _job(submitted_by="lead@x")
    mine = _job(submitted_by="member@x")
    assert views.job_view(theirs, MEMBER, 0.0)["may_manage"] is False
    assert views.job_view(mine, MEMBER, 0.0)["may_manage"] is True
    assert views.job_view(mine, LEAD, 0.0)["may_manage"] is True


def test_jobs_are_listed_newest_first() -> None:
    jobs = [_job(job_id="old", created=1.0), _job(job_id="new", created=2.0)]
    assert [j["job_id"] for j in views.jobs_view(jobs, LEAD, 3.0)["jobs"]] == ["new", "old"]


def test_a_site_that_never_reported_shows_no_figures() -> None:
    view = views.site_view(SiteInfo(name="site-9"))
    assert view["last_seen"] is None
    assert view["rtt_ms"] is None
    assert view["transport"] == ""
    assert view["flower_versions"] == []


def test_the_federation_names_the_relays_listeners_and_each_sites_figures() -> None:
    answer = ListSitesResponse(
        sites=[
            SiteInfo(
                name="site-1",
                online=True,
                last_seen=50.0,
                jobs=["j1"],
                status=SiteStatus(
                    transport="tcps",
                    flower_version="1.42.0",
                    rtt_ms=3.5,
                    calls_last_minute=120,
                    errors_last_minute=2,
                ),
            )
        ],
        relay=RelayInfo(name="relay", listeners=["tcps://0.0.0.0:8443"], started=10.0),
    )
    view = views.federation_view(answer, "tcps://relay:8443")
    assert view["relay"]["listeners"] == ["tcps://0.0.0.0:8443"]
    (site,) = view["sites"]
    assert site["flower_versions"] == ["1.42.0"]
    assert (site["rtt_ms"], site["calls_last_minute"], site["errors_last_minute"]) == (3.5, 120, 2)
    assert site["jobs"] == ["j1"]


def test_metrics_split_the_servers_series_from_each_sites_client_series() -> None:
    answer = GetMetricsResponse(
        job=_job(),
        points=[
            MetricPoint(tag="train/loss", step=2, value=0.4),
            MetricPoint(tag="train/loss", step=1, value=0.5),
            MetricPoint(tag="site-1/train_loss", step=1, value=0.6),
            MetricPoint(tag="site-2/train_loss", step=1, value=0.7),
            MetricPoint(tag="site-3/other", step=1, value=0.8),  # not a site of this job
        ],
    )
    view = views.metrics_view(answer)
    assert view["server"] == {"train/loss": [[1, 0.5], [2, 0.4]], "site-3/other": [[1, 0.8]]}
    assert view["sites"] == {"train_loss": {"site-1": [[1, 0.6]], "site-2": [[1, 0.7]]}}


def test_terminal_colour_codes_are_removed_even_when_cut_between_chunks() -> None:
    plain = views.PlainText()
    assert plain.feed("\x1b[92mINFO \x1b[0") == "INFO "
    assert plain.feed("m:      Starting\n") == ":      Starting\n"
    assert plain.feed("no codes\n") == "no codes\n"
