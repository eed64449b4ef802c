"""Peer server for the load benchmark: FastAPI + fastembed (ONNX Runtime).

Runs inside its own virtualenv (bench/out/venvs/fastembed, made by
bench/peers.py), never in the project's: standard library, fastapi, fastembed
and numpy only, no import of the project.

The model is all-MiniLM-L6-v2 exported to ONNX by ``peers.export_onnx`` (the
hub cannot be reached here), registered with fastembed as a custom model with
mean pooling and L2 normalisation (what sentence-transformers does for this
model), and loaded from that folder with ``specific_model_path``.

Settings come from the environment:

    PEER_MODEL_DIR   the exported folder (model.onnx, tokenizer files)   required
    PEER_MODEL_NAME  the name echoed in answers   default sentence-transformers/all-MiniLM-L6-v2
    PEER_THREADS     ONNX Runtime threads; unset: fastembed's default (ONNX
                     Runtime's own: one intra-op thread per physical core)

Routes: ``POST /v1/embeddings`` (OpenAI-style, ``input`` a string or a list of
strings) and ``GET /healthz`` (200 once the model is loaded: it is loaded
before the server accepts connections).

    PEER_MODEL_DIR=... uvicorn peer_fastembed_server:app --app-dir bench --port 8001 --workers 1
"""
import os
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType
from pydantic import BaseModel

MODEL_DIR = os.environ["PEER_MODEL_DIR"]
MODEL_NAME = os.environ.get("PEER_MODEL_NAME", "sentence-transformers/all-MiniLM-L6-v2")
THREADS = int(os.environ["PEER_THREADS"]) if os.environ.get("PEER_THREADS") else None
# fastembed already lists sentence-transformers/all-MiniLM-L6-v2 (to be downloaded),
# so the local export is registered under a name of its own.
LOCAL_NAME = "local/all-MiniLM-L6-v2-onnx"
MAX_INPUTS = 2048

state = {}


def load_model() -> TextEmbedding:
    TextEmbedding.add_custom_model(
        model=LOCAL_NAME,
        pooling=PoolingType.MEAN,
        normalization=True,
        # Never fetched: specific_model_path short-circuits the download. Named for the record.
        sources=ModelSource(hf="sentence-transformers/all-MiniLM-L6-v2"),
        dim=384,
        model_file="model.onnx",
        output_name="last_hidden_state",
    )
    return TextEmbedding(LOCAL_NAME, specific_model_path=MODEL_DIR, threads=THREADS, cuda=False)


@asynccontextmanager
async def lifespan(app):
    state["model"] = load_model()
    yield
    state.clear()


app = FastAPI(lifespan=lifespan)


class EmbeddingRequest(BaseModel):
    input: str | list[str]
    model: str | None = None
    encoding_format: str | None = None


@app.get("/healthz")
def healthz():
    return {"status": "ok", "model": MODEL_NAME}


# A plain (sync) handler: FastAPI runs it in its thread pool, so the event loop
# stays free for /healthz and new connections while ONNX Runtime computes.
@app.post("/v1/embeddings")
def embeddings(request: EmbeddingRequest):
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts or len(texts) > MAX_INPUTS:
        raise HTTPException(400, f"input must hold 1 to {MAX_INPUTS} texts")
    if request.encoding_format not in (None, "float"):
        raise HTTPException(400, "only encoding_format 'float' is supported")
    vectors = np.stack(list(state["model"].embed(texts)))
    data = [{"object": "embedding", "embedding": vector, "index": i}
            for i, vector in enumerate(vectors.astype(np.float32).tolist())]
    return JSONResponse({"object": "list", "data": data, "model": MODEL_NAME})
