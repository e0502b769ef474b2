"""``sparsifyctl serve``: an Open Inference Protocol (KServe v2 REST) server on onnxruntime.

``protocol`` (wire models, datatypes, request/response codecs), ``model`` (the onnxruntime
session and its metadata), ``batching`` (the asyncio dynamic batcher), ``task`` (image/text
preprocessing from the model's serving card), ``app`` (the fastapi app), ``server``
(uvicorn with a graceful stop). ``--task text-generation``: ``openai_protocol`` (OpenAI's request
and response bodies), ``openai_engine`` (the CPU export, prompts, sampling, stop strings),
``openai_app`` (the /v1 routes). Needs the ``serve`` extra (fastapi, uvicorn).
"""
