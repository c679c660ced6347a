"""The admin client: submit and manage jobs over the relay's one port."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ..core.config import TLSConfig
from ..proto.control_pb2 import (
    DownloadResponse,
    GetLogsRequest,
    GetLogsResponse,
    GetMetricsResponse,
    JobInfo,
    JobRef,
    ListJobsRequest,
    ListJobsResponse,
    ListSitesRequest,
    ListSitesResponse,
    SiteInfo,
    SubmitJobRequest,
)
from ..proto.envelope_pb2 import KIND_ADMIN
from ..transport import TransportClient, connect
from .client import control_call
from .jobs.archive import LeftOut, pack_app
from .jobs.spec import JobSpec, check_flower_app, check_job_name, check_time_limit

log = logging.getLogger(__name__)


class AdminClient:
    """One admin's connection to the relay (admin certificate required)."""

    def __init__(self, *, relay_url: str, tls: TLSConfig) -> None:
        self._client: TransportClient = connect(relay_url, tls=tls)

    async def submit(
        self,
        app_dir: Path,
        *,
        sites: list[str] | None = None,
        min_sites: int = 0,
        run_config: str = "",
        name: str = "",
        time_limit: float = 0.0,
        on_left_out: Callable[[Sequence[LeftOut]], None] | None = None,
    ) -> JobInfo:
        """Check the job as the relay will, pack it and submit it.

        ``on_left_out`` hears which files of ``app_dir`` were not packed and why
        (symbolic links, special files, caches); without it they are logged.
        """
        # Refuse a bad job here, before uploading it; the relay checks again.
        spec = JobSpec.load(app_dir)
        check_flower_app(app_dir)
        if name:
            check_job_name(name, "--name")
        if time_limit:
            check_time_limit(time_limit, "--time-limit")
        packed = pack_app(app_dir)
        if packed.left_out:
            if on_left_out is not None:
                on_left_out(packed.left_out)
            else:
                log.info("left out of the app: %s", ", ".join(map(str, packed.left_out)))
        request = SubmitJobRequest(
            name=name or spec.name,
            app_archive=packed.archive,
            sites=sites or [],
            min_sites=min_sites,
            run_config=run_config,
            time_limit=time_limit,
        )
        return await control_call(
            self._client, KIND_ADMIN, "SubmitJob", request, JobInfo, timeout=120
        )

    async def list_jobs(self) -> list[JobInfo]:
        response = await control_call(
            self._client, KIND_ADMIN, "ListJobs", ListJobsRequest(), ListJobsResponse
        )
        return list(response.jobs)

    async def list_sites(self) -> list[SiteInfo]:
        return list((await self.federation()).sites)

    async def federation(self) -> ListSitesResponse:
        """The sites and the relay that answered (its name and listeners)."""
        return await control_call(
            self._client, KIND_ADMIN, "ListSites", ListSitesRequest(), ListSitesResponse
        )

    async def get(self, job_id: str) -> JobInfo:
        return await control_call(
            self._client, KIND_ADMIN, "GetJob", JobRef(job_id=job_id), JobInfo
        )

    async def logs(
        self, job_id: str, *, source: str = "server", offset: int = 0, wait: float = 0.0
    ) -> GetLogsResponse:
        request = GetLogsRequest(
            job_id=job_id, source=source, offset=offset, wait_ms=int(wait * 1000)
        )
        return await control_call(
            self._client, KIND_ADMIN, "GetLogs", request, GetLogsResponse, timeout=wait + 30
        )

    async def metrics(self, job_id: str) -> GetMetricsResponse:
        """The job's metric series so far (by tag, then round), with the job."""
        return await control_call(
            self._client, KIND_ADMIN, "GetMetrics", JobRef(job_id=job_id), GetMetricsResponse
        )

    async def abort(self, job_id: str) -> JobInfo:
        return await control_call(
            self._client, KIND_ADMIN, "AbortJob", JobRef(job_id=job_id), JobInfo, timeout=90
        )

    async def download(self, job_id: str) -> bytes:
        response = await control_call(
            self._client,
            KIND_ADMIN,
            "Download",
            JobRef(job_id=job_id),
            DownloadResponse,
            timeout=120,
        )
        return response.archive

    async def aclose(self) -> None:
        await self._client.aclose()
