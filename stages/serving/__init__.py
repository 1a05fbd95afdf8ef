"""Serving an exported student over HTTP (`python -m stages serve`): a FastAPI app on uvicorn.

- `batcher`: dynamic batching: concurrent requests grouped into one onnxruntime call;
- `app`: the FastAPI app (POST /predict, GET /health, GET / the page), request checks and limits;
- `static/index.html`: the page to try the model in a browser.

Loads the export directory with onnxruntime and `tokenizers` alone: nothing here imports PyTorch.
"""
