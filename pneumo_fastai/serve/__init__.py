"""The web demo: a Gradio app on an export (`pneumo-fastai serve`), optional extra `[serve]`."""
