"""Hugging Face Space entry point: the sgps-hf app (the UI itself lives in ``sgps_hf.app.ui``).

Locally: ``python demo/app.py`` or ``sgps demo``. Options come from the environment so a Space can set them:
``SGPS_SYNTHESIZER`` (checkpoint folder or Hub id; default: the bundled checkpoint), ``SGPS_DATA_DIR`` (example
tasks; optional), ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT`` (Spaces set these).
"""

import os

from sgps_hf.app.ui import build_demo, launch_demo

demo = build_demo(os.environ.get("SGPS_SYNTHESIZER") or None)

if __name__ == "__main__":
    launch_demo(
        demo,
        host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
