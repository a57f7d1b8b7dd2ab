"""The model card: a typed, versioned description of an export, written by training, read by all.

    from pneumo_fastai.card import read_card, verify_file
    card = read_card("exports/pneumo_resnet34.json")   # validated; ModelFileError if not
    card.decision_threshold.value, card.input.size, card.train_config().seed
    weights = verify_file(card, "exports/pneumo_resnet34.json", "weights")  # sha256 checked

An export is `NAME.json` (this card) beside the files it lists with their sha256: `NAME.pkl`
(fastai Learner), `NAME.safetensors` (weights only; `NAME.pth` in exports of 0.1.0),
`NAME.history.csv`, `NAME.valid.csv` and `NAME.ood.safetensors` (the OOD check's statistics).
The card is a pydantic model rather than a dataclass because every consumer must validate what
it reads: a missing or mistyped field is refused with its dotted location
("decision_threshold.value"), not a KeyError three modules later. Sections keep keys they do
not know (`extra="allow"`), so reading and rewriting a card never drops what a newer minor
writer added. Nothing here imports torch.

Schema history: 1 (pneumo-fastai 0.1.0); 2 adds `kind`, a head description derived from the
module itself, `calibration` (temperature scaling), `ood`, `input.preprocessing`,
`training.phases`, ensembles (`kind="ensemble"`) and safetensors weights, and later
`intended_use` (as MONAI bundles have). A card of schema 1 is read as schema 2 with
`kind="single"`, temperature 1 and no OOD check. A card without `intended_use` reads as having
`research_use()`: no pneumo-fastai export was ever meant for anything else.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import TrainConfig
from .errors import ModelFileError
from .fileio import check_name, fsync_dir, fsync_file, sha256_file, write_text_atomic

CARD_SCHEMA_VERSION = 2
SHA256 = r"^[0-9a-f]{64}$"
Number = float | None  # a figure; None where the data leave it undefined
Finite = Annotated[float, Field(allow_inf_nan=False)]  # NaN or inf would switch a check off
Probability = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]  # strictly inside
Share = Annotated[float, Field(ge=0.01, le=0.99, allow_inf_nan=False)]  # MIN_SHARE .. 1-MIN_SHARE
MIN_SHARE = 0.01  # a class share nearer 0 or 1 than this says the estimate failed (one class)
MAX_INPUT_SIZE = 2048  # px; the network's input side (training needs >= 32)
MAX_OOD_SCORE = 1e6  # bound of an OOD threshold's magnitude


class Section(BaseModel):
    """A part of the card: validated, keeping unknown keys."""

    model_config = ConfigDict(extra="allow", frozen=False, protected_namespaces=())


class Normalization(Section):
    mean: list[Finite] = Field(min_length=1, max_length=3)
    std: list[Annotated[float, Field(gt=1e-6, allow_inf_nan=False)]] = Field(
        min_length=1, max_length=3
    )  # divides the pixels: a zero would make every input infinite


class InputSpec(Section):
    """What the network expects, and how every engine gets there from a file."""

    size: int = Field(ge=32, le=MAX_INPUT_SIZE)  # square side in pixels
    resize: Literal["squash"]  # the whole image squashed to size x size (no crop)
    channels: int  # 3: gray copied to RGB
    source: str  # how a file becomes those channels
    normalize: Normalization  # per-channel mean and std on 0..1 values
    # crop, squash, equalise before the network (`data/preprocess.py`); None: squash only
    preprocessing: dict[str, Any] | None = None


class Architecture(Section):
    body: str
    head: str  # derived from the head module (`model.describe`)
    param_groups: list[str]
    frozen: str


class Exclusion(Section):
    """The list of training images `train --exclude` left out."""

    source: str  # the CSV as given
    sha256: str = Field(pattern=SHA256)  # of the CSV
    listed: int  # names it lists (its suspects, when it has a `suspect` column)
    removed: int  # images of the dataset it removed


class DataFacts(Section):
    """Which images trained and validated the model."""

    root: str
    split_mode: str
    seed: int
    valid_pct: float
    n_train: int
    n_valid: int
    train_counts: dict[str, int]
    valid_counts: dict[str, int]
    train_fingerprint: str
    valid_fingerprint: str
    skipped_files: int
    excluded: Exclusion | None = None  # `train --exclude`: the list and what it removed


class TrainingFacts(Section):
    """How the run went."""

    device: str
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    interrupted: bool
    interrupted_at_epoch: int | None
    balanced_first_epoch_fractions: dict[str, float] | None
    seconds: float  # wall time of `fit`
    seconds_per_epoch: float
    phases: dict[str, float] | None = None  # wall seconds of check, setup, fit (schema 2)
    precision: str
    channels_last: bool
    compute_rule: str | None = None  # why that precision and memory format (schema 2)
    cached_in_ram: bool
    num_workers: int
    distributed: dict[str, Any] | None = None


class Validation(Section):
    """Figures on the validation split: the best epoch's row, argmax and the decision threshold."""

    best_epoch: dict[str, Number]
    argmax: dict[str, Number]  # of P(PNEUMONIA) >= 0.5
    at_threshold: dict[str, Number]  # of P(PNEUMONIA) >= the decision threshold
    subtype: dict[str, Number] | None = None  # the classes' own figures, for subtype models


class Calibration(Section):
    """Temperature scaling fitted on validation logits; every engine divides logits by it."""

    temperature: float = Field(gt=0.0, allow_inf_nan=False)
    method: str
    n: int  # validation images it was fitted on
    before: dict[str, float]  # nll, ece, brier at temperature 1
    after: dict[str, float]  # the same after scaling


class OodFacts(Section):
    """How the export flags inputs unlike its training X-rays (see `inference/ood_scores.py`)."""

    method: str  # mahalanobis (statistics in files["ood"])
    features: str
    alpha: Probability  # share of validation images flagged
    # scores above it are flagged; NaN, or one beyond any score (squared Mahalanobis distances
    # of 512 features are hundreds, an ensemble's ratios near 1), would flag nothing
    threshold: float = Field(ge=-MAX_OOD_SCORE, le=MAX_OOD_SCORE, allow_inf_nan=False)
    threshold_rule: str
    n_train: int
    n_valid: int
    valid_flagged: float


class ModelOod(OodFacts):
    """A single network's check: its own Mahalanobis score against its threshold."""

    shrinkage: float = Field(ge=0.0, le=1.0)  # Ledoit-Wolf's, of the shared covariance


class EnsembleOod(OodFacts):
    """An ensemble's check: its members' scores combined on their own scales, one threshold."""

    combine: str  # how member scores become one (`inference/ood_check.py`)
    n_train_members: list[int]  # each member's training images; `n_train` is their sum


class DecisionThreshold(Section):
    value: Probability  # PNEUMONIA where P(PNEUMONIA) >= value (0 or 1: one answer for all)
    target_sensitivity: Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)] | None = None
    rule: str


class AdaptedFrom(Section):
    """The card an adapted export was made from."""

    name: str
    sha256: str = Field(pattern=SHA256)  # of that card's file


class ShiftTestFacts(Section):
    """`adapt`'s test that the site differs from training only in its class mix."""

    test: str  # what was tested, in words
    normal_share: float = Field(ge=0.0, le=1.0)  # the mixture's fitted NORMAL share
    distance: float = Field(ge=0.0)  # Cramér-von Mises distance from that mixture
    p_value: float = Field(ge=0.0, le=1.0)
    ood_share: float | None = Field(default=None, ge=0.0, le=1.0)  # share the OOD check flagged
    ood_p_value: float | None = Field(default=None, ge=0.0, le=1.0)
    rejected: bool  # the site's images differ from training's beyond the class mix
    forced: bool = False  # `--force-prior`: the correction was applied all the same


class SiteLabelsFit(Section):
    """`adapt --labels`: a temperature and a threshold fitted on a labelled sample of the site."""

    n: dict[str, int]  # labelled images per class
    scale: float = Field(gt=0.0)  # multiplies the logit of the calibrated P(PNEUMONIA)
    threshold_rule: str
    expected_sensitivity: float = Field(ge=0.0, le=1.0)  # on the site's other images
    sensitivity: float = Field(ge=0.0, le=1.0)  # on the sample, at the threshold
    specificity: float = Field(ge=0.0, le=1.0)
    sensitivity_interval: tuple[float, float]
    specificity_interval: tuple[float, float]
    base_threshold: float = Field(ge=0.0, le=1.0)  # the adapted card's threshold before


class Adaptation(Section):
    """`pneumo-fastai adapt`: the export fitted to a new site.

    `kind="prior"`: the site's class shares, estimated from its unlabelled X-rays; every engine
    re-weights the calibrated probabilities from `source` to `target` shares
    (`inference/prior_shift.py`) and decides with `decision_threshold.value` as before.
    `kind="labels"`: a temperature and a threshold fitted on a labelled sample of the site
    (`inference/site_labels.py`); every engine rescales the probabilities' logits by
    `labels.scale` and decides with the card's `decision_threshold`, which is the site's.
    """

    kind: Literal["prior", "labels"] = "prior"
    method: str  # how it was estimated
    rule: str  # how probabilities are adapted
    source: dict[str, Share] = Field(default_factory=dict)  # prior: shares the model assumes
    target: dict[str, Share] = Field(default_factory=dict)  # prior: the site's estimated shares
    interval: dict[str, tuple[Finite, Finite]] = Field(default_factory=dict)  # of `target`
    level: Probability  # of the intervals
    n_images: int  # the site's images used
    n_left_out: int  # flagged by the OOD check or unreadable, not used
    folder: str  # where the site's images (or its label file) were
    raw_threshold: Probability | None = None  # prior: unadapted P(PNEUMONIA) that now decides
    base: AdaptedFrom  # the card adapted
    shift_test: ShiftTestFacts | None = None  # prior: the label-shift test (older cards: none)
    labels: SiteLabelsFit | None = None  # kind "labels"

    @model_validator(mode="after")
    def _shares_sum_to_one(self) -> Adaptation:
        for which in ("source", "target"):
            shares = getattr(self, which)
            if self.kind == "prior" and abs(sum(shares.values()) - 1.0) > 1e-6:
                raise ValueError(f"{which} shares sum to {sum(shares.values())}, not 1")
        return self


class FileEntry(Section):
    name: str  # file name, beside the card
    sha256: str = Field(pattern=SHA256)


class OnnxInput(Section):
    """What the ONNX graph takes: the prepared gray image, normalised inside the graph."""

    name: str  # image
    shape: list[str | int]  # ["batch", 1, size, size]
    dtype: str  # uint8
    range: list[int]  # [0, 255]
    size: int = Field(ge=1)
    resize: str
    preprocessing: dict[str, Any]  # the card's `input.preprocessing`, run before the graph
    channels: str


class OnnxEntry(Section):
    """`export onnx`: the graph in files["onnx"], how it was made, what it takes and gives."""

    file: str
    opset: int
    exporter: str
    parity_max_abs_diff: float  # largest |onnxruntime - torch| probability at export
    input: OnnxInput
    outputs: dict[str, str]  # output name: its shape and meaning
    networks: int = Field(ge=1)  # 1, or an ensemble's members


class IntendedUse(Section):
    """What the model is for, whom its training data represent, and what it is not for."""

    purpose: str
    population: str  # whom the training X-rays represent
    out_of_scope: list[str]  # uses the model must not be put to


def research_use() -> IntendedUse:
    """The intended use of every pneumo-fastai export: research, not diagnosis."""
    return IntendedUse(
        purpose="Research and testing of chest X-ray classification (pneumonia, and its "
        "bacterial and viral subtypes). Not a medical device: not for diagnosis, screening or "
        "treatment decisions.",
        population="Its reference training data (Kermany et al. 2018, Cell 172(5): the Kaggle "
        "'Chest X-Ray Images (Pneumonia)') are anterior-posterior chest X-rays of children aged "
        "one to five from one hospital, Guangzhou Women and Children's Medical Center; `data` "
        "says which images this model trained on.",
        out_of_scope=[
            "diagnosis, screening, triage or treatment of patients",
            "adults, other ages, hospitals or scanners, unless validated there",
            "views other than frontal chest X-rays, and other modalities",
            "images its OOD check flags as unlike its training X-rays",
        ],
    )


class CardBase(Section):
    """What every card has, a single model's or an ensemble's."""

    schema_version: int
    task: Literal["binary", "subtype"] = "binary"  # subtype: NORMAL, BACTERIA, VIRUS (schema 2)
    name: str
    created: str
    classes: list[str]  # the network's outputs, in order; the first is NORMAL
    positive_class: str  # the binary decision's positive label: PNEUMONIA
    input: InputSpec
    config: dict[str, Any]
    validation: Validation
    decision_threshold: DecisionThreshold
    versions: dict[str, str]
    files: dict[str, FileEntry]
    intended_use: IntendedUse = Field(default_factory=research_use)  # older cards: research use
    onnx: OnnxEntry | None = None  # `export onnx`: the graph's input spec (files["onnx"])
    adaptation: Adaptation | None = None  # `adapt`: probabilities re-weighted to a site's mix

    @model_validator(mode="after")
    def _consistent(self) -> CardBase:
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes} must be two or more distinct names")
        pooled = self.task == "subtype" and self.positive_class == "PNEUMONIA"
        if self.positive_class not in self.classes[1:] and not pooled:
            raise ValueError(
                f"positive_class {self.positive_class!r} is not one of the classes after "
                f"the first ({', '.join(self.classes[1:])})"
            )
        norm = self.input.normalize
        if len(norm.mean) != len(norm.std):
            raise ValueError("input.normalize.mean and std differ in length")
        if self.adaptation is not None and self.adaptation.kind == "prior":
            for which in ("source", "target"):
                if set(getattr(self.adaptation, which)) != set(self.classes):
                    raise ValueError(f"adaptation.{which} does not name the card's classes")
        return self

    def train_config(self) -> TrainConfig:
        """The training configuration recorded in the card."""
        try:
            return TrainConfig.from_dict(self.config)
        except (TypeError, ValueError) as e:
            raise ModelFileError(f"The card's config cannot be read ({e}).") from e

    def to_json(self) -> str:
        """The card as indented JSON (NaN written as null)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"


class ModelCard(CardBase):
    """One trained network (see the module docstring)."""

    kind: Literal["single"] = "single"
    architecture: Architecture
    data: DataFacts
    training: TrainingFacts
    calibration: Calibration | None = None  # schema 2; None: temperature 1
    ood: ModelOod | None = None  # schema 2; None: no OOD check ("unknown")

    @property
    def temperature(self) -> float:
        """What logits are divided by before the softmax (1 for cards without calibration)."""
        return 1.0 if self.calibration is None else self.calibration.temperature


class Member(Section):
    """One network of an ensemble: its card, checked by sha256, and that card's files."""

    name: str
    card: str  # path of the member's card, relative to the ensemble card's folder
    sha256: str = Field(pattern=SHA256)  # of the member's card file
    files: dict[str, FileEntry]  # the member card's own list (weights, pkl, ...)


class EnsembleData(Section):
    """Which images the members trained on and what the threshold was chosen on."""

    root: str
    method: Literal["folds", "seeds"]
    k: int  # members
    n_valid: int  # pooled validation images (folds: every image once, out of fold)
    valid_counts: dict[str, int]
    valid_fingerprint: str


class MemberTraining(Section):
    """One member's run, as its card records it."""

    name: str
    epochs_run: int
    best_epoch: int
    seconds: float  # wall time of its `fit`
    temperature: float = Field(gt=0.0)  # its calibration


class EnsembleTraining(Section):
    """How the members' runs went."""

    seconds: float  # the members' `fit` wall times together
    members: list[MemberTraining]


class EnsembleCard(CardBase):
    """Several networks whose calibrated probabilities are averaged (issue 12)."""

    kind: Literal["ensemble"] = "ensemble"
    members: list[Member] = Field(min_length=2)
    data: EnsembleData
    training: EnsembleTraining
    combine: str  # how member outputs become the ensemble's
    ood: EnsembleOod | None = None  # the members' combined score and its held-out threshold


Card = ModelCard | EnsembleCard


@dataclass(frozen=True)
class ExportPaths:
    """Where one export's files live."""

    pkl: Path  # fastai Learner pickle (`load_learner`)
    weights: Path  # state dict only, as safetensors: loads without unpickling anything
    card: Path  # JSON model card
    history: Path  # per-epoch CSV written by fastai's CSVLogger
    valid: Path  # validation predictions (file, label, probability of PNEUMONIA)
    ood: Path  # the OOD detector's statistics (safetensors)

    @classmethod
    def for_name(cls, folder: Path, name: str) -> ExportPaths:
        """The paths of export `name` inside `folder` (a name, never a path: see `check_name`)."""
        if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
            check_name(name)  # refuses it, saying what a name may hold
        folder = Path(folder)
        return cls(
            pkl=folder / f"{name}.pkl",
            weights=folder / f"{name}.safetensors",
            card=folder / f"{name}.json",
            history=folder / f"{name}.history.csv",
            valid=folder / f"{name}.valid.csv",
            ood=folder / f"{name}.ood.safetensors",
        )

    def of(self, kind: str) -> Path:
        """The path of one kind of file (pkl, weights, history, valid, ood)."""
        return getattr(self, kind)


def timestamp() -> str:
    """Now, in UTC to the second: when a card (or report) was written."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions that matter for reloading and reproducing a model (read without importing)."""
    out = {}
    for name, dist in (
        ("pneumo_fastai", "pneumo-fastai"),
        ("fastai", "fastai"),
        ("torch", "torch"),
        ("torchvision", "torchvision"),
    ):
        try:
            out[name] = version(dist)
        except PackageNotFoundError:
            continue
    return out | {"python": platform.python_version()}


def card_path_of(path: Path | str) -> Path:
    """The card of an export given as its .json, .pkl or .safetensors, or its folder."""
    path = Path(path)
    if path.is_dir():
        cards = sorted(path.glob("*.json"))
        if len(cards) != 1:
            raise ModelFileError(
                f"{path} is a folder with {len(cards)} model cards; "
                "pass one export's .json, .pkl or .safetensors."
            )
        return cards[0]
    for suffix in (".ood.safetensors", ".history.csv", ".valid.csv"):
        if path.name.endswith(suffix):
            return path.with_name(path.name.removesuffix(suffix) + ".json")
    return path if path.suffix == ".json" else path.with_suffix(".json")


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(the card itself)"


def parse_card(data: Any, source: Path | str = "model card") -> Card:
    """Validate a card's JSON object; refuse a newer schema or a missing or mistyped field."""
    if not isinstance(data, dict):
        raise ModelFileError(f"{source} is not a model card (a JSON object was expected).")
    schema = data.get("schema_version")
    if not isinstance(schema, int):
        raise ModelFileError(
            f"{source} has no schema_version: it is not a pneumo-fastai model card. Pass the "
            "NAME.json that `pneumo-fastai train` wrote."
        )
    if schema > CARD_SCHEMA_VERSION:
        raise ModelFileError(
            f"{source} has schema {schema}, newer than this pneumo-fastai understands "
            f"({CARD_SCHEMA_VERSION}); upgrade pneumo-fastai."
        )
    kind = data.get("kind", "single")
    model = {"single": ModelCard, "ensemble": EnsembleCard}.get(kind)
    if model is None:
        raise ModelFileError(f"{source} has kind {kind!r}; this version reads single, ensemble.")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        missing = [_where(err) for err in e.errors() if err["type"] == "missing"]
        if missing:
            raise ModelFileError(
                f"{source} is missing {', '.join(missing)}; it cannot be used. Re-export the "
                "model with `pneumo-fastai train`."
            ) from e
        wrong = "; ".join(f"{_where(err)}: {err['msg']}" for err in e.errors()[:5])
        raise ModelFileError(f"{source} has invalid values ({wrong}).") from e


def read_card(path: Path | str) -> Card:
    """Load and validate the card of export `path` (its .json, .pkl, .safetensors or folder)."""
    card_path = card_path_of(path)
    if not card_path.is_file():
        raise ModelFileError(
            f"Model card {card_path} not found. Pass an export from `pneumo-fastai train` "
            "(NAME.pkl, NAME.safetensors and NAME.json side by side)."
        )
    try:
        data = json.loads(card_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(f"Model card {card_path} is not valid JSON ({e}).") from e
    return parse_card(data, f"Model card {card_path}")


def _base_folder(card: CardBase, card_path: Path) -> Path | None:
    """An adapted card's source export folder: where its files are, beside the source's card."""
    base = card.adaptation.base if card.adaptation is not None else None
    if base is None or Path(base.name).name != base.name or base.name in ("", ".", ".."):
        return None
    names = [e.name for e in card.files.values()]
    names += [m.card for m in getattr(card, "members", [])]
    for name in names:
        found = (card_path.parent / name).resolve()
        for folder in (found.parent, found.parent.parent):  # a file, or a member's card
            if (folder / f"{base.name}.json").is_file():
                return folder
    return None


def export_folders(card: CardBase, card_path: Path | str) -> list[Path]:
    """The folders a card's files may lie in: its own and, if adapted, its source export's."""
    card_path = Path(card_path)
    own = card_path.parent.resolve()
    base = _base_folder(card, card_path)
    return [own] if base is None or base == own else [own, base]


def resolve_in_export(card: CardBase, card_path: Path | str, name: str, what: str) -> Path:
    """`name` (relative to the card's folder) resolved, links followed, if it stays in the export.

    Absolute names, `..` and symbolic links that lead out of `export_folders` are refused, so
    that a card cannot make any reader open (or hash) a file elsewhere on the machine.
    """
    card_path = Path(card_path)
    path = (card_path.parent / name).resolve()
    folders = export_folders(card, card_path)
    if not any(path.is_relative_to(folder) for folder in folders):
        raise ModelFileError(
            f"Model card {card_path} lists {what} {name!r}, which lies outside the export's "
            f"folder ({folders[0]}); absolute paths, '..' and links out of it are refused. "
            "Keep an export's files beside its card (copy the whole folder), or re-export it."
        )
    return path


def verify_file(card: CardBase, card_path: Path | str, kind: str) -> Path:
    """Path of the card's `kind` file ('pkl', 'weights', 'valid'), after checking its sha256."""
    entry = card.files.get(kind)
    if entry is None:
        raise ModelFileError(f"Model card {card_path} lists no {kind} file; re-export the model.")
    path = resolve_in_export(card, card_path, entry.name, f"its {kind} file")
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; it belongs to model card {card_path}.")
    if sha256_file(path) != entry.sha256:
        raise ModelFileError(
            f"{path} does not match its model card (its sha256 is not the {entry.sha256[:12]}… "
            "the card records): the file was modified or belongs to another export. "
            "Refusing to load it."
        )
    return path


def _kept_old_card(card_path: Path, replaced: set[Path]) -> list[Path]:
    """Keep the current card valid while its files are replaced: hard links to the files it
    lists that are about to be replaced, under hidden names, and the card repointed at them."""
    try:
        old = read_card(card_path)
    except ModelFileError:
        return []  # no card, or none worth keeping: nothing refers to the files
    fields = old.model_dump(mode="json")
    kept = []
    for kind, entry in old.files.items():
        path = card_path.parent / entry.name
        if path.resolve() not in replaced or not path.is_file():
            continue
        backup = path.with_name(f".{path.name}.prev")
        backup.unlink(missing_ok=True)
        try:
            os.link(path, backup)
        except OSError:  # no hard links here
            shutil.copy2(path, backup)
        fsync_file(backup)
        kept.append(backup)
        fields["files"][kind]["name"] = (Path(entry.name).parent / backup.name).as_posix()
    if kept:
        fsync_dir(card_path.parent)
        write_text_atomic(card_path, json.dumps(fields, indent=2, allow_nan=False) + "\n")
        fsync_dir(card_path.parent)
    return kept


def switch_export(card_path: Path, staged: dict[Path, Path], card: CardBase) -> None:
    """Put `staged` files (temp -> final) in place and then `card` at `card_path`, the card last.

    The new files are flushed to disk first; while they replace the old ones, the old card
    points at hard links of its own files, so a kill at any moment leaves one card whose files
    match it (the old export or the new), never new weights under the old card.
    """
    card_path = Path(card_path)
    folder = card_path.parent
    for tmp in staged:
        fsync_file(tmp)
    kept = _kept_old_card(card_path, {Path(final).resolve() for final in staged.values()})
    for tmp, final in staged.items():
        os.replace(tmp, final)
    fsync_dir(folder)
    write_text_atomic(card_path, card.to_json(), sync=True)
    fsync_dir(folder)
    for backup in kept:
        backup.unlink(missing_ok=True)
