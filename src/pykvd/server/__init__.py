"""`pykvd serve`: an OpenAI-compatible HTTP server over pykvd sessions (Starlette on uvicorn).

N slots, each its own Session under the configured policy and KV budget, serve one request at a time
each; a request takes the slot that already holds the longest prefix of its prompt and processes only
the rest. Modules, in the order a request meets them:

- app.py: the Starlette application, errors in OpenAI's shape; auth.py: --api-key
- routes.py: the endpoints; validation.py: request bodies; shapes.py: response bodies
- engine.py: the model, its slots and their threads; slots.py: the slots and the bounded queue
- worker.py: one generation in a slot's thread, with pykvd.prompt_reuse (longest common prefix,
  Session.rewind) and pykvd.stop_strings, which pykvd.Llama shares; streaming.py: server-sent events
  and client disconnects
- config.py: the settings; runner.py: binding, loading and running uvicorn

Imports run one way: this package imports pykvd, never the reverse. The command line imports
server.config (no Starlette in it) for its defaults, and server.runner only to serve, so every other
command works without the server extra. This file imports nothing, so no module imports back through it.
"""
