"""The framework floor for bench.load_bench: a bare FastAPI app that reads a posted body and
answers a small JSON, served by the same uvicorn as the service. Whatever the service spends
beyond it is the service's own."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body)})


@app.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})
