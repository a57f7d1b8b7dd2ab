"""`pneumo-fastai serve`: the Gradio web demo on an export, on this machine by default.

pneumo-fastai serve exports/pneumo_resnet34.json --port 7860
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from ..errors import PneumoError
from .options import DeviceOpt, ModelArg, PickleOpt, PrecisionOpt

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve_command(
    model: ModelArg,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. The default serves this machine only; 0.0.0.0 lets "
            "anyone on the network use the model."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    max_file_mb: Annotated[
        float, typer.Option(help="Uploads larger than this are refused before they are read.")
    ] = 50.0,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Requests processed at once; the others wait in a queue.")
    ] = 2,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    trust_pickle: PickleOpt = False,
) -> None:
    """Serve a web page (and a `predict` API) to try the model: upload an X-ray, see the answer.

    Research software, not a medical device. Offline and private by default: no analytics,
    nothing loaded from the internet, no public share link.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported
    try:
        import gradio  # noqa: F401 - only to say clearly when the extra is missing
    except ImportError as e:
        raise PneumoError(
            "`pneumo-fastai serve` needs Gradio, an optional extra: pip install -e '.[serve]' "
            "(or pip install 'pneumo-fastai[serve]')."
        ) from e
    from starlette.middleware import Middleware

    from ..card import card_path_of
    from ..inference.predict import load_model
    from ..serve.app import THEME, build_app
    from ..serve.uploads import CountUploads, Uploads

    if host not in LOCAL_HOSTS:
        typer.secho(
            f"Warning: listening on {host}: anyone who can reach this machine on port {port} "
            "can use the model and upload files to it.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    classifier = load_model(model, trust_pickle=trust_pickle, device=device, precision=precision)
    uploads = Uploads()
    uploads.sweep_every(60.0)
    demo = build_app(classifier, card_path_of(model), uploads)
    demo.queue(default_concurrency_limit=concurrency, max_size=64).launch(
        server_name=host,
        server_port=port,
        share=False,
        max_file_size=int(max_file_mb * 2**20),  # bytes
        theme=THEME,
        ssr_mode=False,
        show_error=True,
        app_kwargs={"middleware": [Middleware(CountUploads, uploads=uploads)]},
    )
