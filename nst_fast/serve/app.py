"""The HTTP API (FastAPI on Starlette): routes that translate requests to :class:`~.service.Service` calls.

Every error is a status with ``{"error": "<one line>"}``; no traceback reaches a client. A bearer token,
when set, is required on every route except ``/healthz`` and the static page (which holds no data and
sends the token the user types with each API call). Request bodies are bounded before they are read.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from .. import __version__
from ..image import srgb_profile
from .admission import ApiError
from .config import ServeConfig
from .jobs import CANCELLED, DONE, FINISHED
from .service import Service

log = logging.getLogger("nst_fast.serve")

RESULT_FORMATS = {"png": ("PNG", "image/png"), "jpg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
RESULT_FORMATS["jpeg"] = RESULT_FORMATS["jpg"]
RESULT_FORMATS["tif"] = RESULT_FORMATS["tiff"] = ("TIFF", "image/tiff")
KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies close silent ones)
PAGE = resources.files(__package__) / "page"


def create_app(config: ServeConfig, service: Service | None = None) -> FastAPI:
    """The ASGI app of ``nst-fast serve``; its lifespan starts and stops the service's workers."""
    service = service or Service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(title="nst-fast", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(Guard, token=config.token, max_body=2 * config.max_upload_bytes + 2**20, service=service)
    _error_handlers(app, service)
    _routes(app, service, config)
    app.mount("/page", StaticFiles(directory=str(PAGE)), name="page")
    return app


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _error_handlers(app: FastAPI, service: Service) -> None:
    def rejected(status: int, message: str, headers=None) -> JSONResponse:
        service.metrics.rejected.labels(str(status)).inc()
        return error(status, message, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return rejected(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return rejected(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return rejected(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(MultiPartException)
    async def multipart_error(request: Request, e: MultiPartException):
        return rejected(400, f"the request body is not valid multipart/form-data: {e.message}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return rejected(500, f"internal error: {type(e).__name__}")


def _routes(app: FastAPI, service: Service, config: ServeConfig) -> None:
    @app.get("/healthz")
    def healthz():
        return {"status": "alive", "ready": service.ready}

    @app.get("/readyz")
    def readyz():
        if service.scheduler.failure:
            return error(503, service.scheduler.failure)
        if service.draining:
            return error(503, "shutting down")
        if not service.ready:
            return error(503, "warming up: loading the weights and running a first step")
        return {"status": "ready"}

    @app.get("/metrics")
    def metrics():
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(PAGE / "index.html"), media_type="text/html")

    # Styles.

    @app.post("/v1/styles", status_code=201)
    async def add_style(request: Request):
        async with _form(request) as form:
            data = await _file(form, "image", config, required=True)
        record = await run_in_threadpool(service.add_style, data)
        return {"id": record.id, "width": record.width, "height": record.height}

    @app.get("/v1/styles")
    def list_styles():
        return {
            "styles": [
                {"id": s.id, "width": s.width, "height": s.height, "created": s.created} for s in service.store.styles()
            ]
        }

    @app.delete("/v1/styles/{style_id}")
    def delete_style(style_id: str):
        service.delete_style(style_id)
        return {"id": style_id, "deleted": True}

    # Jobs.

    async def submit(request: Request):
        await run_in_threadpool(service.check_accepting)  # before reading the uploads
        async with _form(request) as form:
            content = await _file(form, "content", config, required=True)
            style = await _file(form, "style", config, required=False)
            style_id, options = _text(form, "style_id"), _text(form, "options")
        return await run_in_threadpool(service.submit, content, style, style_id, options)

    @app.post("/v1/jobs", status_code=202)
    async def add_job(request: Request):
        job = await submit(request)
        return JSONResponse(
            {"id": job.id, "status": job.status}, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"}
        )

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str):
        return service.view(service.job(job_id))

    @app.delete("/v1/jobs/{job_id}")
    def cancel_job(job_id: str):
        job = service.cancel(job_id)
        if job.status != CANCELLED:
            raise ApiError(409, f"job {job_id} is {job.status} already: nothing to cancel")
        return service.view(job)

    @app.get("/v1/jobs/{job_id}/result")
    def result(job_id: str, format: str = "png"):
        return _image_response(service.result(job_id), format)

    @app.get("/v1/jobs/{job_id}/events")
    async def events(job_id: str, preview: int | None = None):
        await run_in_threadpool(service.job, job_id)  # 404 before the stream starts
        if preview is not None and preview < 1:
            raise ApiError(422, f"preview must be a positive number of steps, got {preview}")
        return StreamingResponse(
            _event_stream(service, job_id, preview),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/stylize")
    async def stylize(request: Request, format: str = "png", timeout: float | None = None):
        """Submit a job and answer with its image when it is done (504, and the job cancelled, past the
        timeout: the server's job timeout, or ``timeout`` seconds when shorter)."""
        if format not in RESULT_FORMATS:
            raise ApiError(422, f"format must be one of {', '.join(RESULT_FORMATS)}, got {format!r}")
        wait = config.job_timeout if timeout is None else min(max(timeout, 0.0), config.job_timeout)
        job = await submit(request)
        stream = service.hub.open(job.id)
        try:
            await service.hub.opened(stream)
            final = await _wait_final(service, stream, job.id, wait, request)
        finally:
            service.hub.close(stream)
        if final == "gone":  # the client hung up: nobody will fetch the image
            await run_in_threadpool(service.cancel, job.id)
            return Response(status_code=499)
        if final is None:
            await run_in_threadpool(service.cancel, job.id)
            job = await run_in_threadpool(service.job, job.id)
            if job.status != DONE:
                raise ApiError(504, f"job {job.id} was not done within {wait:g} s; it was cancelled")
            final = job.status
        if final == DONE:
            path = await run_in_threadpool(service.result, job.id)
            return _image_response(path, format, headers={"X-Job-Id": job.id})
        job = await run_in_threadpool(service.job, job.id)
        if final == "end":
            raise ApiError(503, f"the server is shutting down; job {job.id} stays queued", {"Retry-After": "30"})
        status = 409 if job.status == CANCELLED else 504 if "timed out" in (job.error or "") else 500
        raise ApiError(status, f"job {job.id} {job.status}: {job.error}")

    @app.get("/v1/samples/{name}")
    def sample(name: str):
        """The built-in sample photograph and painting, for the page's "use a sample" buttons."""
        from ..samples import sample_content, sample_style

        makers = {"content": sample_content, "style": sample_style}
        if name not in makers:
            raise ApiError(404, f"no sample {name!r}: there are content and style")
        buffer = io.BytesIO()
        makers[name]().save(buffer, format="JPEG", quality=90)
        return Response(buffer.getvalue(), media_type="image/jpeg")


async def _wait_final(service: Service, stream, job_id: str, timeout: float, request: Request) -> str | None:
    """The final status of ``job_id``; "end" if the server ends the stream, "gone" if the client hangs up,
    None past ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    job = await run_in_threadpool(service.job, job_id)  # it may have finished before the stream opened
    if job.status in FINISHED:
        return job.status
    while (left := end - loop.time()) > 0:
        event = await stream.next(min(left, 1.0))
        if event is None:
            if await request.is_disconnected():
                return "gone"
            continue
        if event.kind == "end":
            return "end"
        if event.kind == "status" and event.data["status"] in FINISHED:
            return event.data["status"]
    return None


async def _event_stream(service: Service, job_id: str, preview: int | None):
    """Server-Sent Events of one job: its status now, then progress (and previews), then its final
    status, after which the stream ends. The hub's stream is opened before the status is read, so that
    nothing between the two is missed, and closed however the response ends (a client gone included)."""
    stream = service.hub.open(job_id, preview)
    try:
        await service.hub.opened(stream)
        job = await run_in_threadpool(service.job, job_id)
        yield _sse("status", await run_in_threadpool(service.view, job))
        if job.status in FINISHED:
            return
        if service.draining:
            yield _sse("end", {"error": "the server is shutting down; queued jobs stay queued"})
            return
        while True:
            event = await stream.next(KEEPALIVE)
            if event is None:
                yield ": keep-alive\n\n"
                continue
            yield _sse(event.kind, event.data)
            if event.kind == "end" or (event.kind == "status" and event.data["status"] in FINISHED):
                return
    finally:
        service.hub.close(stream)


def _sse(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _image_response(path, fmt: str, headers: dict[str, str] | None = None) -> Response:
    """A stored result (PNG) in the format asked for, converted in memory."""
    if fmt not in RESULT_FORMATS:
        raise ApiError(422, f"format must be one of {', '.join(RESULT_FORMATS)}, got {fmt!r}")
    pillow_format, media_type = RESULT_FORMATS[fmt]
    headers = {"Content-Disposition": f'attachment; filename="{path.stem}.{fmt}"', **(headers or {})}
    if pillow_format == "PNG":
        return FileResponse(str(path), media_type=media_type, headers=headers)
    with Image.open(path) as image:
        buffer = io.BytesIO()
        extra = {"quality": 92} if pillow_format in ("JPEG", "WEBP") else {}
        image.convert("RGB").save(buffer, format=pillow_format, icc_profile=srgb_profile(), **extra)
    return Response(buffer.getvalue(), media_type=media_type, headers=headers)


class _form:
    """``async with _form(request) as form``: the multipart form, its spooled files closed afterwards."""

    def __init__(self, request: Request):
        self.request = request

    async def __aenter__(self):
        content_type = self.request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(415, "send the files as multipart/form-data")
        self.form = await self.request.form(max_files=4, max_fields=8)
        return self.form

    async def __aexit__(self, *exc):
        await self.form.close()


async def _file(form, name: str, config: ServeConfig, required: bool) -> bytes | None:
    """The bytes of the uploaded file ``name``, within the size limit."""
    value = form.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name}: an image file is required (multipart/form-data field {name!r})")
        return None
    if not isinstance(value, UploadFile):
        raise ApiError(400, f"{name}: expected an image file, got a text field")
    data = await value.read(config.max_upload_bytes + 1)
    if len(data) > config.max_upload_bytes:
        raise ApiError(413, f"{name}: the file is larger than this server's limit of {config.max_upload_mb:g} MB")
    if not data:
        raise ApiError(400, f"{name}: the file is empty")
    return data


def _text(form, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ApiError(400, f"{name}: expected a text field, got a file")


class Guard:
    """ASGI middleware in front of every route: the bearer token (compared in constant time) and the
    request body's size (refused when declared too large, cut off when it grows past the limit)."""

    PUBLIC = ("/healthz", "/", "/favicon.ico")

    def __init__(self, app, token: str | None, max_body: int, service: Service):
        self.app, self.max_body, self.service = app, max_body, service
        self.token = None if token is None else token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.token is not None and path not in self.PUBLIC and not path.startswith("/page/"):
            scheme, _, supplied = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(supplied.strip(), self.token):
                why = "a bearer token is required" if not supplied else "the bearer token is wrong"
                return await self._reject(scope, receive, send, 401, why, {"WWW-Authenticate": "Bearer"})
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await self._reject(scope, receive, send, 413, self._too_large())
        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ApiError(413, self._too_large())
            return message

        await self.app(scope, bounded_receive, send)

    def _too_large(self) -> str:
        return f"the request body is larger than this server accepts ({self.max_body / 2**20:.0f} MB)"

    async def _reject(self, scope, receive, send, status: int, message: str, headers=None) -> None:
        self.service.metrics.rejected.labels(str(status)).inc()
        await error(status, message, headers)(scope, receive, send)
