"""Settings shared by the notebooks in nbs/: quick mode, data path, work folder, held-out test set.

    import nbsetup as nb  # nb.S (sizes), nb.DATA, nb.WORK, nb.holdout_dataset(), nb.train_config()

Environment variables:
    PNEUMO_QUICK=1   tiny settings (a few dozen 64 px images, one epoch): every notebook runs top
                     to bottom in well under a minute on 2 CPU cores. CI runs them this way.
    PNEUMO_DATA      dataset root in the Kaggle layout (default ../../shared/data/chest_xray,
                     relative to this folder).
    PNEUMO_NB_WORK   folder for exports, reports and scratch files (default: a folder under the
                     system temp dir). Nothing is written into the repository.

Everything here is notebook plumbing; the machine learning is all `pneumo_fastai`'s.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

# Import-time noise that says nothing about this project
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")
warnings.filterwarnings("ignore", message="IProgress not found")

from PIL import Image  # noqa: E402

from pneumo_fastai import TrainConfig, train  # noqa: E402
from pneumo_fastai.config import CLASSES  # noqa: E402
from pneumo_fastai.data.split import limit_per_class  # noqa: E402
from pneumo_fastai.errors import DataError  # noqa: E402
from pneumo_fastai.datatools.holdout import carve_holdout  # noqa: E402

NBS = Path(__file__).resolve().parent
QUICK = os.environ.get("PNEUMO_QUICK", "").strip().lower() not in ("", "0", "false", "no")


@dataclass(frozen=True)
class Settings:
    """How big the notebooks' runs are."""

    limit: int | None  # training images per class (train + valid, before the 70/30 split)
    size: int  # input side in pixels
    epochs: int  # epochs of the main model (notebook 01, reused by 03 and 04)
    bs: int  # batch size
    demo_limit: int  # notebook 02's own run: images per class
    demo_size: int  # ... input side
    demo_epochs: int  # ... most epochs
    demo_patience: int  # ... early-stopping patience
    test_per_class: int | None  # held-out test images per class (None: the whole holdout)
    n_boot: int  # bootstrap resamples per interval in notebook 03


REAL = Settings(  # the main model is the recipe bench/RESULTS.md chose: 64 px, 12 epochs, all images
    limit=None, size=64, epochs=12, bs=32,
    demo_limit=150, demo_size=64, demo_epochs=8, demo_patience=2,
    test_per_class=None, n_boot=1000,
)  # fmt: skip
QUICK_SETTINGS = Settings(
    limit=12, size=64, epochs=1, bs=8,
    demo_limit=12, demo_size=64, demo_epochs=1, demo_patience=1,
    test_per_class=6, n_boot=100,
)  # fmt: skip
S = QUICK_SETTINGS if QUICK else REAL
MODE = "quick" if QUICK else "real"

DATA = Path(os.environ.get("PNEUMO_DATA") or NBS / "../../shared/data/chest_xray").resolve()
SITE = DATA.parent / "official_test_a"  # half A of the official test split: a new site (03)
WORK = Path(
    os.environ.get("PNEUMO_NB_WORK") or Path(tempfile.gettempdir()) / "pneumo-fastai-nbs" / MODE
)
EXPORTS = WORK / "exports"
NAME = "pneumo_nb"  # the main model's export name (notebook 01 trains it; 03 and 04 reuse it)
TEST_PCT = 0.15  # patients held out for testing when the dataset has no test/ split
SEED = 42


def require_data() -> Path:
    """The dataset root, or an error that says where to put it."""
    if not (DATA / "train").is_dir():
        raise DataError(
            f"No dataset at {DATA}: set PNEUMO_DATA to a folder holding train/NORMAL and "
            "train/PNEUMONIA (`pneumo-fastai data download` fetches one)."
        )
    return DATA


def holdout_dataset(data: Path | None = None) -> Path:
    """A dataset root with a test/ split: `data` itself if it has one, else a patient-held-out view.

    The view lives under WORK and holds symbolic links, not copies (`pneumo-fastai data
    holdout`): train/ gets the images of 85% of the patients and test/ the other 15%, grouped by
    patient and stratified by class, so no patient is in both. In quick mode test/ keeps only a
    few images per class.
    """
    data = data or require_data()
    if (data / "test").is_dir():
        return data
    view = WORK / "chest_xray_holdout"
    if view.exists():
        shutil.rmtree(view)  # removes the links only, never what they point to
    carve_holdout(data, view, pct=TEST_PCT, seed=SEED)
    if S.test_per_class is not None:
        test = sorted(p for p in (view / "test").rglob("*") if p.is_symlink())
        keep = set(limit_per_class(test, S.test_per_class, SEED))
        for link in test:
            if link not in keep:
                link.unlink()
    return view


def train_config(**changes) -> TrainConfig:
    """The main model's config: no ImageNet download (offline machines), the notebook sizes."""
    config = TrainConfig(
        data=holdout_dataset(),
        exports=EXPORTS,
        name=NAME,
        pretrained=False,
        size=S.size,
        bs=S.bs,
        epochs=S.epochs,
        limit=S.limit,
        num_workers=0,
        seed=SEED,
    )
    return config.replace(**changes)


def ensure_model() -> Path:
    """The main model's card: the export notebook 01 wrote, or a fresh one trained the same way."""
    card = EXPORTS / f"{NAME}.json"
    if not card.is_file():
        train(train_config(), progress=False)  # fastai's epoch table as plain lines
    return card


def compact_image(png: bytes, max_width: int = 760) -> tuple[str, bytes]:
    """A picture at most `max_width` px wide, as the smaller of two encodings: a 256-colour PNG
    (sharp for plots) or a quality-85 JPEG (for grids of X-rays). Returns ("png" | "jpeg", bytes).
    """
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    as_png, as_jpeg = io.BytesIO(), io.BytesIO()
    palette = img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(as_png, "PNG", optimize=True)
    img.save(as_jpeg, "JPEG", quality=85, optimize=True)
    if len(as_jpeg.getvalue()) < 0.6 * len(as_png.getvalue()):
        return "jpeg", as_jpeg.getvalue()
    return "png", as_png.getvalue()


def show_image(path: Path, max_width: int = 760) -> None:
    """Display a PNG written by the package (a report plot), compacted for the notebook file."""
    from IPython.display import Image as IPyImage
    from IPython.display import display

    fmt, data = compact_image(Path(path).read_bytes(), max_width)
    display(IPyImage(data=data, format=fmt))


def compact_figures(dpi: int = 72) -> None:
    """Inline matplotlib figures as small images, so that notebooks stay small to diff."""
    import matplotlib.pyplot as plt
    from IPython import get_ipython
    from matplotlib.figure import Figure

    plt.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "font.size": 9})

    def render(fig: Figure) -> tuple[str, bytes | None]:
        if not fig.axes:
            return "png", None
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
        return compact_image(buf.getvalue())

    def only(fmt: str):
        def format_figure(fig: Figure) -> bytes | None:
            chosen, data = render(fig)
            return data if chosen == fmt else None

        return format_figure

    formatters = get_ipython().display_formatter.formatters
    for fmt in ("png", "jpeg"):
        formatters[f"image/{fmt}"].for_type(Figure, only(fmt))


def describe() -> str:
    """One line naming the mode and the settings in force."""
    return (
        f"{MODE} mode (PNEUMO_QUICK={'1' if QUICK else 'unset'}): {S}\n"
        f"data: {DATA}\nwork folder: {WORK}\nclasses: {', '.join(CLASSES)}"
    )
