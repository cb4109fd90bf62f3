"""Serving shrunk DarwinLM checkpoints with vLLM.

``plugin.register`` is the ``vllm.general_plugins`` entry point; ``model`` holds the
vLLM model classes (imported lazily by vLLM, never by this ``__init__``, so that the
package imports without vLLM installed).
"""
