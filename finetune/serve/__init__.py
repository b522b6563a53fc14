"""`finetune serve`: an OpenAI-compatible HTTP endpoint over a trained model folder, loaded as `finetune predict`
loads it; what the model answers (chat, text completion, labels) is what its task's kind does.

FastAPI and uvicorn, because they are well kept, stream answers asynchronously as server-sent events, and check
requests with the pydantic models the project already uses. `app.py` holds the routes and error answers,
`requests.py` the request and answer shapes, `limits.py` what a request may ask, `batcher.py` the model's one worker
thread, `decode.py` batched generation, `served.py` the loaded model, `server.py` the process.
"""
