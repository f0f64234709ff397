"""Bad requests, each answered with the right 4xx and a one-line JSON error, the server healthy after it."""

from __future__ import annotations

import io
import json
import struct
import zlib

import httpx
import pytest
from PIL import Image

from .helpers import AUTH, CONTENT, STYLE, assert_error

NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"


def bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A valid PNG header declaring ``width``×``height`` px, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(CONTENT)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def job_request(content=CONTENT, style=STYLE, options=None, **data):
    files = {"content": ("c.png", content)}
    if style is not None:
        files["style"] = ("s.png", style)
    if options is not None:
        data["options"] = options if isinstance(options, str) else json.dumps(options)
    return {"files": files, "data": data}


CASES = {
    "not an image": (job_request(content=b"this is plain text, not pixels" * 10), 415, ["content", "not an image"]),
    "an empty file": (job_request(content=b""), 400, ["content", "empty"]),
    "a truncated JPEG": (job_request(content=truncated_jpeg()), 415, ["content", "truncated"]),
    "a decompression bomb": (job_request(content=bomb()), 422, ["too large", "40000×40000"]),
    "a style that is no image": (job_request(style=b"GIF89a but not really"), 415, ["style"]),
    "an upload over the limit": (job_request(content=b"\0" * (3 * 2**19)), 413, ["content", "limit of 1 MB"]),
    "options that are not JSON": (job_request(options="{steps: 5"), 400, ["options", "JSON"]),
    "options that are not an object": (job_request(options="[5]"), 422, ["JSON object"]),
    "an unknown option": (job_request(options={"stepz": 5}), 422, ["unknown option", "stepz"]),
    "an out-of-range option": (job_request(options={"steps": -1}), 422, ["steps"]),
    "an option of the wrong type": (job_request(options={"size": "big"}), 422, ["size", "integer"]),
    "a choice not offered": (job_request(options={"optimizer": "sgd"}), 422, ["optimizer", "lbfgs"]),
    "an option the server sets": (job_request(options={"weights": "/etc/passwd"}), 422, ["weights", "server"]),
    "an init naming a file": (job_request(options={"init": "/etc/hosts"}), 422, ["init", "names no file"]),
    "a result over the pixel limit": (job_request(options={"size": 40000}), 422, ["size", "limit"]),
    "a job over the step limit": (job_request(options={"steps": 600}), 422, ["600 iterations", "limit of 500"]),
    "a size too small for the layers": (job_request(options={"size": 8}), 422, ["at least"]),
    # The server's pixel limit here is 10⁹ and its size 64: a style scaled to 64 × 600 = 38400 px square is above it.
    "a style scaled over the pixel limit": (
        job_request(options={"style_scale": 600}),
        422,
        ["style image would be", "style_scale"],
    ),
    "no content": ({"files": {"style": ("s.png", STYLE)}}, 400, ["content", "required"]),
    "no style and no style id": (job_request(style=None), 400, ["style"]),
    "both a style and a style id": (job_request(style_id=NO_SUCH_ID), 400, ["exactly one"]),
    "an unknown style id": (job_request(style=None, style_id=NO_SUCH_ID), 404, ["no style"]),
    "a style id that is no id": (job_request(style=None, style_id="../../etc/passwd"), 404, ["no style"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_job_request_is_refused_in_one_line(api, case):
    request, status, words = CASES[case]
    assert_error(api.post("/v1/jobs", **request), status, *words)
    api.wait_healthy()


def test_a_stored_style_scaled_over_the_pixel_limit_is_refused(api):
    """The style's size is checked at submission for a stored style too (from its recorded shape): not
    by a worker stuck for minutes in a forward pass over hundreds of megapixels that no cancel reaches."""
    response = api.post("/v1/styles", files={"image": ("s.png", STYLE)})
    assert response.status_code == 201, response.text
    style_id = response.json()["id"]
    request = job_request(style=None, style_id=style_id, options={"style_scale": 600})
    assert_error(api.post("/v1/jobs", **request), 422, "style image would be", "style_scale")
    ok = job_request(style=None, style_id=style_id, options={"style_scale": 2})
    assert api.post("/v1/jobs", **ok).status_code == 202
    api.wait_healthy()


def test_a_run_beyond_the_memory_is_refused_with_a_suggestion(api):
    """30000 px planned in one piece needs hundreds of GiB: 413, with the options that would fit."""
    message = assert_error(api.post("/v1/jobs", **job_request(options={"size": 30000})), 413, "GiB", "would fit")
    assert '"tile":' in message or '"size":' in message
    api.wait_healthy()


def test_a_body_declared_too_large_is_refused_before_it_is_read(api):
    response = api.post("/v1/jobs", content=b"\0" * (4 * 2**20), headers={"Content-Type": "multipart/form-data; x"})
    assert_error(response, 413, "larger than this server accepts")
    api.wait_healthy()


def test_a_body_that_is_not_multipart_is_refused(api):
    assert_error(api.post("/v1/jobs", json={"content": "x"}), 415, "multipart/form-data")
    assert_error(api.post("/v1/styles", files={"image": ("s.png", b"")}), 400, "image", "empty")
    assert_error(api.post("/v1/styles", files={"image": ("s.png", b"<svg/>")}), 415, "image")


@pytest.mark.parametrize(
    "path",
    [f"/v1/jobs/{NO_SUCH_ID}", f"/v1/jobs/{NO_SUCH_ID}/result", f"/v1/jobs/{NO_SUCH_ID}/events", "/v1/jobs/not-an-id"],
)
def test_an_unknown_job_id_is_404(api, path):
    assert_error(api.get(path), 404, "no job")
    assert_error(api.delete(f"/v1/jobs/{NO_SUCH_ID}"), 404, "no job")


def test_a_result_before_the_job_is_done_is_409(api):
    job = api.submit({"steps": 200, "style_weight": 40.0})
    try:
        assert_error(api.get(f"/v1/jobs/{job}/result"), 409, "its result exists once it is done")
        assert_error(api.get(f"/v1/jobs/{job}/events", params={"preview": 0}), 422, "preview")
    finally:
        api.delete(f"/v1/jobs/{job}")
    assert_error(api.get(f"/v1/jobs/{job}/result"), 409, "cancelled")


@pytest.mark.parametrize(
    "headers, why",
    [({}, "required"), ({"Authorization": "Bearer wrong"}, "wrong"), ({"Authorization": "Basic abc"}, "wrong")],
)
def test_a_missing_or_wrong_token_is_401_everywhere_but_healthz(server, headers, why):
    for method, path in [("GET", "/metrics"), ("GET", "/v1/styles"), ("POST", "/v1/jobs"), ("GET", "/readyz")]:
        response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=60)
        assert_error(response, 401, why)
        assert response.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{server.url}/healthz", headers=headers, timeout=60).status_code == 200
    assert httpx.get(f"{server.url}/readyz", headers=AUTH, timeout=60).status_code == 200


def test_unknown_routes_and_methods_answer_json(api):
    assert_error(api.get("/v1/nothing"), 404)
    assert_error(api.put("/v1/jobs"), 405)
    api.wait_healthy()
