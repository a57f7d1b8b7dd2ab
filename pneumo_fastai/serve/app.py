"""A Gradio app on an export, for clinician-researchers to try the model in a browser.

    pneumo-fastai serve exports/pneumo_resnet34.json            # http://127.0.0.1:7860

    from pneumo_fastai.serve.app import build_app
    demo = build_app(load_model("exports/x.json"), "exports/x.json")
    demo.queue(default_concurrency_limit=2).launch(...)

The app adds no logic of its own: it calls the package's inference (`XrayClassifier`), its
Grad-CAM (`evaluation.gradcam`) and its result rows (`inference.results`). Tabs:
- one image: the decision at the card's threshold as the headline, then P(PNEUMONIA), the argmax
  class and every class's probability, and, enlarged, the image as the model saw it (DICOM
  included) beside its Grad-CAM of P(PNEUMONIA); one decode and one forward pass per upload;
- batch: several files or a zip; a table with the columns of `predict --out` and a CSV;
- the model card's essentials.
The `predict` API endpoint takes one file and returns the JSON of `api_result`. A bad upload is
an error message (and `error` in the API), never a crash; the next request works. Each upload
(X-rays, DICOMs with their patient data, zips) is deleted from Gradio's cache once the last request
that was sent it is answered (`uploads.Uploads`: requests that send the same bytes share Gradio's
one copy), and a zip is extracted within `zipfiles.UPLOAD`'s caps into a folder removed with the
request. What Gradio keeps is the answers it sends (the batch CSV, the pictures shown), deleted an
hour after they were made (`CACHE_CLEANUP`). The page shows no server path: the card is shown with
every path reduced to its last part (`public_card`). Requests share one network:
`ExportedModel.lock` makes them take turns on it, whatever `--concurrency` allows.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from ..card import Card, EnsembleCard
from ..data.formats import PREDICT_SUFFIXES
from ..errors import PneumoError
from ..evaluation.gradcam import ForwardCapture, overlay
from ..fileio import sha256_file
from ..inference.inputs import expand_inputs
from ..inference.predict import XrayClassifier
from ..inference.results import Prediction, output_columns, write_predictions
from ..zipfiles import UPLOAD, extract_zip
from .uploads import Uploads

BANNER = (
    "**Research software, not a medical device.** The answer below is a model's guess on one "
    "image, for research and testing only; it must not be used to diagnose or treat anyone."
)
FILE_TYPES = sorted(PREDICT_SUFFIXES)  # what the upload boxes offer
THEME = gr.themes.Default(  # system fonts: the page loads nothing from the internet
    font=["system-ui", "-apple-system", "Segoe UI", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
)
DISPLAY_PX = 448  # the model's input (often 128-224 px) is shown enlarged to at least this side
PANEL_PX = DISPLAY_PX + 60  # an image panel's height: the picture and, above it, its label
CACHE_CLEANUP = (900, 3600)  # Gradio's cache: every 15 minutes, files older than an hour go
PATH_KEYS = frozenset({"root", "data", "exports", "weights", "exclude", "folder", "source"})
Rows = list[list[Any]]
OneImage = tuple[str, dict[str, float] | None, Image.Image | None, Image.Image | None]


def api_result(pred: Prediction) -> dict[str, Any]:
    """What the `predict` endpoint returns for one file."""
    return {
        "probability": pred.probability,
        "prediction": pred.label,
        "prediction_argmax": pred.label_argmax,
        "threshold": pred.threshold,
        "ood": pred.ood,
        "ood_score": pred.ood_score,
        "ood_reason": pred.ood_reason,
        "error": pred.error,
    }


def _public(value: Any, key: str = "") -> Any:
    """`value` with every path-like string reduced to its last part (no server paths)."""
    if isinstance(value, dict):
        return {k: _public(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v, key) for v in value]
    if isinstance(value, str) and (key in PATH_KEYS or value.startswith(("/", "~", "\\"))):
        return Path(value).name or value
    return value


def public_card(card: Any) -> dict[str, Any]:
    """The card's JSON as the page shows it: paths on the server reduced to their last part."""
    return _public(card.model_dump(mode="json"))


def _scrubbed(pred: Prediction, path: str) -> Prediction:
    """`pred` with the upload's server path left out of its file and error."""
    path = str(path)
    name = Path(path).name
    error = pred.error
    if error is not None:
        error = error.replace(path, name).replace(str(Path(path).parent), "")
    file = None if pred.file is None else Path(pred.file).name
    return replace(pred, file=file, error=error)


def card_markdown(classifier: XrayClassifier, card_path: Path) -> str:
    """The model card's essentials, for people."""
    card = classifier.exported.card
    v = card.validation.at_threshold
    fig = ", ".join(
        f"{name} {v[key]:.3f}"
        for name, key in (("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                          ("specificity", "specificity"), ("ROC AUC", "roc_auc"))
        if v.get(key) is not None
    )  # fmt: skip
    kind = (
        f"ensemble of {len(card.members)} ({card.data.method})"
        if isinstance(card, EnsembleCard)
        else "single ResNet34"
    )
    counts = card.data.valid_counts
    use = card.intended_use
    return "\n".join(
        [
            f"**Model** `{card.name}` ({kind}), classes {', '.join(card.classes)}, "
            f"input {card.input.size} px, created {card.created}",
            f"**Intended use** {use.purpose} **Not for** {'; '.join(use.out_of_scope)}.",
            f"**Population** {use.population}",
            f"**Training data** `{Path(card.data.root).name}`; validation images: "
            + ", ".join(f"{k} {n}" for k, n in counts.items()),
            f"**Validation** at the decision threshold: {fig}",
            f"**Decision threshold** {card.decision_threshold.value:.4g}: "
            f"{card.decision_threshold.rule}",
            *adaptation_lines(card),
            f"**Card** `{card_path.name}`, sha256 `{sha256_file(card_path)}`",
        ]
    )


def adaptation_lines(card: Card) -> list[str]:
    """What an adapted export was fitted to (no line for one that was not adapted)."""
    a = card.adaptation
    if a is None:
        return []
    site = f"site `{Path(a.folder).name}`, adapted from `{a.base.name}`"
    if a.kind == "labels":
        lab = a.labels
        (s_lo, s_hi), (p_lo, p_hi) = lab.sensitivity_interval, lab.specificity_interval
        return [
            f"**Adapted** to {site} on {lab.n['NORMAL']} NORMAL and {lab.n['PNEUMONIA']} "
            f"PNEUMONIA labelled X-rays: logit scale {lab.scale:.3f}, threshold "
            f"{card.decision_threshold.value:.4g} (was {lab.base_threshold:.4g}); on that sample "
            f"sensitivity {lab.sensitivity:.3f} [{s_lo:.3f}, {s_hi:.3f}], specificity "
            f"{lab.specificity:.3f} [{p_lo:.3f}, {p_hi:.3f}]"
        ]
    lo, hi = a.interval["NORMAL"]
    forced = (
        " **forced** although its label-shift test rejected the site"
        if (a.shift_test is not None and a.shift_test.forced)
        else ""
    )
    return [
        f"**Adapted** to {site}: its NORMAL share estimated at {a.target['NORMAL']:.3f} "
        f"[{lo:.3f}, {hi:.3f}] from {a.n_images} unlabelled X-rays (training: "
        f"{a.source['NORMAL']:.3f}); probabilities re-weighted to it{forced}"
    ]


def decision_markdown(pred: Prediction) -> str:
    """The decision at the card's threshold as the headline; P(PNEUMONIA) and argmax below it."""
    if not pred.ok:
        return f"**Could not read this file:** {pred.error}"
    side = "≥" if pred.probability >= pred.threshold else "<"
    text = (
        f"# {pred.label}\n\n"
        f"Decision at the model card's threshold: P(PNEUMONIA) = {pred.probability:.4f} "
        f"{side} {pred.threshold:.3g}.\n\n"
        f"Most probable class (argmax): {pred.label_argmax}."
    )
    if pred.ood:
        text = (
            f"**Not like the training X-rays: {pred.ood_reason}.** Do not read the answer "
            f"below as a diagnosis.\n\n{text}"
        )
    return text


def _enlarged(image: Image.Image) -> Image.Image:
    """`image` scaled up to DISPLAY_PX a side (if smaller), so that a person can read it."""
    side = max(DISPLAY_PX, image.width)
    return image.resize((side, side * image.height // image.width), Image.Resampling.LANCZOS)


def predict_one(classifier: XrayClassifier, uploads: Uploads, path: str | None) -> OneImage:
    """The image tab: decision, class probabilities, the model's input and its Grad-CAM overlay.

    The file is decoded and run through the network once, by `predict`; the Grad-CAM (of
    P(PNEUMONIA), see `evaluation.gradcam`) is taken from that same forward pass.
    """
    if path is None:
        return "Upload an X-ray (JPEG, PNG, TIFF or DICOM).", None, None, None
    model = classifier.exported.learner.model
    # the hooks must see this request's pass alone: hold the model's lock around both
    with uploads.using([path]), classifier.exported.lock, ForwardCapture(model) as seen:
        pred = _scrubbed(classifier.predict(path), path)
        gray, cam = seen.explain() if pred.ok else (None, None)
    if not pred.ok:
        gr.Warning(f"Could not read this file: {pred.error}")
        return decision_markdown(pred), None, None, None
    negative, positive = classifier.classes
    probs = pred.class_probabilities or {positive: pred.probability, negative: 1 - pred.probability}
    picture = Image.fromarray((gray[0] * 255).round().astype(np.uint8))
    return (
        decision_markdown(pred),
        probs,
        _enlarged(picture),
        _enlarged(overlay(gray[0], cam[0])),
    )


def api_predict(classifier: XrayClassifier, uploads: Uploads, path: str | None) -> dict[str, Any]:
    """The `predict` endpoint: one file in, `api_result` out, an error for a bad file."""
    if path is None:
        return api_result(Prediction(None, None, None, None, classifier.threshold, "no file sent"))
    with uploads.using([path]):
        return api_result(_scrubbed(classifier.predict(path), path))


def _batch_inputs(paths: Sequence[str], work: Path) -> list[Path]:
    """Uploaded files, with zip archives extracted (safely) into `work`."""
    files: list[Path] = []
    for i, p in enumerate(paths):
        if zipfile.is_zipfile(p):
            target = work / f"zip{i}"
            extract_zip(Path(p), target, UPLOAD, name=Path(p).name)
            files += expand_inputs([target])
        else:
            files.append(Path(p))
    return files


def predict_batch(
    classifier: XrayClassifier, uploads: Uploads, paths: list[str] | None
) -> Iterator[tuple[Rows, str | None]]:
    """The batch tab: a table of `predict --out` rows and the same as a CSV file.

    A generator that yields once: Gradio copies the CSV into its own cache when it takes the
    answer and only then resumes the generator, which removes the request's folder (the CSV and
    any extracted zip) on its way out, as it does if the request is dropped.
    """
    if not paths:
        yield [], None
        return
    with uploads.using(paths), tempfile.TemporaryDirectory(prefix="pneumo-serve-") as tmp:
        try:
            files = _batch_inputs(paths, Path(tmp))
        except PneumoError as e:
            gr.Warning(str(e).replace(tmp, ""))
            yield [], None
            return
        preds = [_scrubbed(p, str(p.file)) for p in classifier.predict_batch(files)]
        out = Path(tmp) / "predictions.csv"
        write_predictions(preds, out)
        columns = output_columns(classifier.card.classes)
        yield [[p.row()[c] for c in columns] for p in preds], str(out)


def build_app(
    classifier: XrayClassifier, card_path: Path | str, uploads: Uploads | None = None
) -> gr.Blocks:
    """The Blocks app (not launched); `uploads` decides when an upload is deleted (give it the
    upload route's counts with `CountUploads`, as `serve` does)."""
    card_path = Path(card_path)
    uploads = Uploads() if uploads is None else uploads
    title = "pneumo-fastai: chest X-ray classifier"
    with gr.Blocks(title=title, delete_cache=CACHE_CLEANUP) as demo:
        gr.Markdown("# NORMAL vs PNEUMONIA, chest X-ray")
        gr.Markdown(BANNER)
        with gr.Tab("One image"):
            with gr.Row():
                upload = gr.File(label="X-ray", file_types=FILE_TYPES, type="filepath")
                with gr.Column():
                    decision = gr.Markdown(elem_id="decision")
                    label = gr.Label(label="Class probabilities", show_heading=False)
            with gr.Row():
                seen = gr.Image(label="What the model saw", type="pil", interactive=False,
                                height=PANEL_PX, elem_id="seen")  # fmt: skip
                heat = gr.Image(label="Grad-CAM: evidence for PNEUMONIA", type="pil",
                                interactive=False, height=PANEL_PX,
                                elem_id="gradcam")  # fmt: skip
            upload.change(
                partial(predict_one, classifier, uploads),
                inputs=upload,
                outputs=[decision, label, seen, heat],
                api_visibility="private",
            )
        with gr.Tab("Batch"):
            batch_files = gr.File(
                label="X-rays or a zip of them", file_count="multiple", type="filepath",
                file_types=[*FILE_TYPES, ".zip"], elem_id="batch-files",
            )  # fmt: skip
            run = gr.Button("Predict all", variant="primary")
            columns = list(output_columns(classifier.card.classes))
            table = gr.Dataframe(headers=columns, label="Results", wrap=True)
            csv_file = gr.File(label="Download CSV", elem_id="batch-csv")
            run.click(
                partial(predict_batch, classifier, uploads),
                inputs=batch_files,
                outputs=[table, csv_file],
                api_visibility="private",
            )
        with gr.Tab("Model card"):
            gr.Markdown(card_markdown(classifier, card_path))
            card_json = json.dumps(public_card(classifier.exported.card), indent=2)
            gr.Code(card_json, language="json", label=card_path.name)
        api_file = gr.File(visible=False, type="filepath")
        api_out = gr.JSON(visible=False)
        api_go = gr.Button(visible=False)
        api_go.click(
            partial(api_predict, classifier, uploads), inputs=api_file, outputs=api_out,
            api_name="predict",
        )  # fmt: skip
    return demo
