"""The `vllm.general_plugins` entry point (pyproject.toml): vLLM calls register() in each of its
processes before it parses arguments, so `--attention-backend CUSTOM` finds turboquant's backend.
Importing this module imports neither vLLM's model code nor torch; the backend class is imported
by vLLM's registry only when the backend is selected. docs/vllm.md."""

BACKEND_PATH = "turboquant.vllm_backend.TurboQuantBackend"


def register() -> None:
    """Registers TurboQuantBackend as vLLM's CUSTOM attention backend (idempotent; vLLM may load
    plugins more than once). Another plugin's CUSTOM backend is left in place, with a warning."""
    import logging

    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    custom = AttentionBackendEnum.CUSTOM
    current = custom.get_path() if custom.is_overridden() else None
    if current not in (None, BACKEND_PATH):
        logging.getLogger(__name__).warning("turboquant: vLLM's CUSTOM attention backend is already %s; not replacing it", current)
        return
    register_backend(AttentionBackendEnum.CUSTOM, BACKEND_PATH)
