"""A Gradio app on an export, for clinician-researchers to try the model in a browser.

    pneumo-fastai serve exports/pneumo_resnet34.json            # http://127.0.0.1:7860

    from pneumo_fastai.serve.app import build_app
    demo = build_app(load_model("exports/x.json"), "exports/x.json")
    demo.queue(default_concurrency_limit=2).launch(...)

The app adds no logic of its own: it calls the package's inference (`XrayClassifier`), its
Grad-CAM (`evaluation.gradcam.explain`) and its result rows (`inference.results`). Tabs:
- one image: P(PNEUMONIA), the decision at the card's threshold and at argmax, the image as the
  model saw it (DICOM included) beside its Grad-CAM, and the model card's essentials;
- batch: several files or a zip; a table with the columns of `predict --out` and a CSV.
The `predict` API endpoint takes one file and returns the JSON of `api_result`. A bad upload is
an error message (and `error` in the API), never a crash; the next request works.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from ..card import EnsembleCard
from ..datatools.download import extract_zip
from ..errors import PneumoError
from ..evaluation.gradcam import explain, overlay
from ..fileio import sha256_file
from ..inference.inputs import expand_inputs, read_item
from ..inference.predict import XrayClassifier
from ..inference.results import OUTPUT_COLUMNS, Prediction, write_predictions

BANNER = (
    "**Research software, not a medical device.** The answer below is a model's guess on one "
    "image, for research and testing only; it must not be used to diagnose or treat anyone."
)
FILE_TYPES = [".jpeg", ".jpg", ".png", ".tif", ".tiff", ".dcm", ".dicom"]
THEME = gr.themes.Default(  # system fonts: the page loads nothing from the internet
    font=["system-ui", "-apple-system", "Segoe UI", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
)


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
    return "\n".join(
        [
            f"**Model** `{card.name}` ({kind}), classes {', '.join(card.classes)}, "
            f"input {card.input.size} px, created {card.created}",
            f"**Training data** `{card.data.root}`; validation images: "
            + ", ".join(f"{k} {n}" for k, n in counts.items()),
            f"**Validation** at the decision threshold: {fig}",
            f"**Decision threshold** {card.decision_threshold.value:.4g}: "
            f"{card.decision_threshold.rule}",
            f"**Card** `{card_path.name}`, sha256 `{sha256_file(card_path)}`",
        ]
    )


def _decision_markdown(pred: Prediction) -> str:
    if not pred.ok:
        return f"**Could not read this file:** {pred.error}"
    text = (
        f"**{pred.label}** at the card's threshold ({pred.threshold:.3g}); "
        f"**{pred.label_argmax}** at argmax. P(PNEUMONIA) = {pred.probability:.4f}"
    )
    if pred.ood:
        text = (
            f"**Not like the training X-rays: {pred.ood_reason}.** Do not read the answer "
            f"below as a diagnosis.\n\n{text}"
        )
    return text


def predict_one(classifier: XrayClassifier, path: str | None):
    """The image tab: label, decision text, the model's input and its Grad-CAM overlay."""
    if path is None:
        return None, "Upload an X-ray (JPEG, PNG, TIFF or DICOM).", None, None
    decoded = read_item(path, classifier.size)
    if isinstance(decoded, str):
        gr.Warning(f"Could not read this file: {decoded}")
        failed = Prediction(path, None, None, None, classifier.threshold, decoded)
        return None, _decision_markdown(failed), None, None
    image = decoded.image
    pred = classifier.predict(path)  # from the file: the input checks see its own colours
    gray, cam = explain(classifier.exported, [image])
    seen = Image.fromarray((gray[0] * 255).astype("uint8"))
    negative, positive = classifier.classes
    label = pred.class_probabilities or {positive: pred.probability, negative: 1 - pred.probability}
    return label, _decision_markdown(pred), seen, overlay(gray[0], cam[0])


def api_predict(classifier: XrayClassifier, path: str | None) -> dict[str, Any]:
    """The `predict` endpoint: one file in, `api_result` out, an error for a bad file."""
    if path is None:
        return api_result(Prediction(None, None, None, None, classifier.threshold, "no file sent"))
    return api_result(classifier.predict(path))


def _batch_inputs(paths: Sequence[str], work: Path) -> list[Path]:
    """Uploaded files, with zip archives extracted (safely) into `work`."""
    files: list[Path] = []
    for i, p in enumerate(paths):
        if zipfile.is_zipfile(p):
            target = work / f"zip{i}"
            extract_zip(Path(p), target, progress=False)
            files += expand_inputs([target])
        else:
            files.append(Path(p))
    return files


def predict_batch(classifier: XrayClassifier, paths: list[str] | None):
    """The batch tab: a table of `predict --out` rows and the same as a CSV file."""
    if not paths:
        return [], None
    work = Path(tempfile.mkdtemp(prefix="pneumo-serve-"))
    try:
        files = _batch_inputs(paths, work)
    except PneumoError as e:
        gr.Warning(str(e))
        return [], None
    preds = [replace(p, file=Path(p.file).name) for p in classifier.predict_batch(files)]
    out = work / "predictions.csv"
    write_predictions(preds, out)
    rows = [[p.row()[c] for c in OUTPUT_COLUMNS] for p in preds]
    return rows, str(out)


def build_app(classifier: XrayClassifier, card_path: Path | str) -> gr.Blocks:
    """The Blocks app (not launched)."""
    card_path = Path(card_path)
    with gr.Blocks(title="pneumo-fastai: chest X-ray classifier") as demo:
        gr.Markdown("# NORMAL vs PNEUMONIA, chest X-ray")
        gr.Markdown(BANNER)
        with gr.Tab("One image"):
            with gr.Row():
                upload = gr.File(label="X-ray", file_types=FILE_TYPES, type="filepath")
                with gr.Column():
                    label = gr.Label(label="Probabilities", num_top_classes=2)
                    decision = gr.Markdown()
            with gr.Row():
                seen = gr.Image(label="What the model saw", type="pil", interactive=False)
                heat = gr.Image(label="Grad-CAM: evidence for PNEUMONIA", type="pil",
                                interactive=False)  # fmt: skip
            upload.change(
                lambda p: predict_one(classifier, p),
                inputs=upload,
                outputs=[label, decision, seen, heat],
                api_visibility="private",
            )
        with gr.Tab("Batch"):
            uploads = gr.File(
                label="X-rays or a zip of them", file_count="multiple", type="filepath",
                file_types=[*FILE_TYPES, ".zip"],
            )  # fmt: skip
            run = gr.Button("Predict all", variant="primary")
            table = gr.Dataframe(headers=list(OUTPUT_COLUMNS), label="Results", wrap=True)
            csv_file = gr.File(label="Download CSV")
            run.click(
                lambda ps: predict_batch(classifier, ps),
                inputs=uploads,
                outputs=[table, csv_file],
                api_visibility="private",
            )
        with gr.Tab("Model card"):
            gr.Markdown(card_markdown(classifier, card_path))
            gr.Code(classifier.exported.card.to_json(), language="json", label=card_path.name)
        api_file = gr.File(visible=False, type="filepath")
        api_out = gr.JSON(visible=False)
        api_go = gr.Button(visible=False)
        api_go.click(
            lambda p: api_predict(classifier, p), inputs=api_file, outputs=api_out,
            api_name="predict",
        )  # fmt: skip
    return demo
