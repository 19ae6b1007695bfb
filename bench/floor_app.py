"""The framework floors for bench.load_bench, served by the same uvicorn as the service: a bare
FastAPI app that reads a posted body and answers a small JSON (``/echo``: bytes only, never
parsed), and the same app taking the body as FastAPI apps take JSON (``/parse``: a ``dict``
body parameter, decoded by FastAPI). Whatever the service spends beyond them is its own."""

from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body)})


@app.post("/parse")
async def parse(payload: dict[str, Any] = Body(...)) -> JSONResponse:  # noqa: B008
    return JSONResponse({"received": len(payload)})


@app.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})
