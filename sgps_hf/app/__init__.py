"""The Gradio app: classification and segmentation tabs (``sgps demo``, ``demo/app.py``)."""
