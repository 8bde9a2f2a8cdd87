"""Serving tuned models over an OpenAI-compatible HTTP API: `tunelab serve TARGET [TARGET ...]`.

- `catalog`: what is served, each run or model a `model` id; runs whose PEFT adapters share a base load it once;
- `batcher`: the one worker thread answering concurrent requests: continuous batching of generations, with
  classifications and scores answered between decoding steps;
- `decoding`: the rows decoding together on one model, joining and leaving at every step;
- `folding`: LoRA adapters on a shared base, folded into its weights while a batch uses one, else run per row;
- `protocol`: the OpenAI request and error shapes, checked so a bad request gets a 400 that names its field;
- `prompts`: a request's prompt as token ids, read as the model was trained to read it;
- `jobs`: requests handed to the batcher, within the timeout or streamed as server-sent events;
- `errors`: every failure in OpenAI's error shape, and the limits that name themselves;
- `metrics`: Prometheus counters and the access log;
- `openapi`: the published schema, with this server's own bounds;
- `settings`: the limits and batching of `tunelab serve`'s options;
- `adapters`: adapters loaded and unloaded while the server runs (vLLM's endpoints, --allow-adapter-loading);
- `routes`: the endpoints; `app`: the FastAPI application assembled from these parts.
"""
