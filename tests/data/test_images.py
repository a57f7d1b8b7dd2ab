"""Every image format, mode and failure `load_xray` promises to handle, built in tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    generate_uid,
)

from pneumo_fastai.data.formats import PREDICT_SUFFIXES, RASTER_SUFFIXES
from pneumo_fastai.data.images import (
    check_image,
    check_images,
    find_unreadable,
    is_dicom,
    load_xray,
    load_xray_bytes,
    to_gray8,
    window_to_uint8,
)
from pneumo_fastai.data.layout import discover
from pneumo_fastai.errors import DataError

from ..helpers.data import png_header, write_image

RAMP12 = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (8, 1))  # 8 x 256, 12-bit ramp


def pixels_of(path: Path, **kwargs) -> np.ndarray:
    img = load_xray(path, **kwargs)
    assert img.mode == "L"
    return np.asarray(img)


def assert_ramp(row: np.ndarray) -> None:
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row.astype(int)) >= 0)
    assert len(np.unique(row)) > 0.75 * min(len(row), 256)  # a ramp, not a few steps


def write_dicom(
    path: Path,
    pixels: np.ndarray,  # (rows, cols), (frames, rows, cols) or (rows, cols, 3) for RGB
    photometric: str = "MONOCHROME2",
    syntax: str = ExplicitVRLittleEndian,
    fragments: list[bytes] | None = None,  # encapsulated frames for a compressed syntax
    **elements,  # further data elements, e.g. WindowCenter=...
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    color = photometric == "RGB"
    ds.SamplesPerPixel = 3 if color else 1
    if color:
        ds.PlanarConfiguration = 0
    if pixels.ndim == 3 and not color:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if color else pixels.shape[-2:]
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    if fragments is None:
        ds.PixelData = pixels.tobytes()
    else:
        ds.PixelData = encapsulate(fragments)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def test_suffix_sets():
    assert {".jpeg", ".jpg", ".png"} == RASTER_SUFFIXES
    assert RASTER_SUFFIXES | {".tif", ".tiff", ".dcm", ".dicom"} == PREDICT_SUFFIXES


# --- raster formats and modes -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_8bit_gray_is_kept_exactly(tmp_path, suffix):
    a = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(a).save(path := tmp_path / f"x{suffix}")
    assert np.array_equal(pixels_of(path), a)


@pytest.mark.parametrize(
    ("suffix", "dtype", "mode"),
    [
        (".png", "<u2", "I;16"),
        (".tif", "<u2", "I;16"),
        (".tif", ">u2", "I;16B"),
        (".tif", "<i4", "I"),
        (".tif", "<f4", "F"),
    ],
)
def test_deep_gradient_becomes_monotonic_ramp(tmp_path, suffix, dtype, mode):
    a = np.tile(np.linspace(0, 65535, 300).astype(dtype), (20, 1))
    Image.fromarray(a).save(path := tmp_path / f"x{suffix}")
    assert Image.open(path).mode == mode  # really stored at that depth
    out = pixels_of(path)
    assert out.shape == (20, 300)
    assert_ramp(out[0])


def test_percentile_window_ignores_hot_pixels(tmp_path):
    a = np.tile(np.linspace(1000, 2000, 256).astype(np.uint16), (64, 1))
    a[0, 0], a[0, 1] = 65535, 0  # a hot and a dead pixel: min-max would leave ~4 grey levels
    Image.fromarray(a).save(path := tmp_path / "x.png")
    assert_ramp(pixels_of(path)[32])


def test_window_to_uint8_falls_back_to_min_max_for_nearly_constant_data():
    values = np.zeros(1000)
    values[0] = 1.0  # the 0.5..99.5 % window is empty
    out = window_to_uint8(values)
    assert out.dtype == np.uint8 and out[0] == 255 and out[1:].max() == 0
    assert not window_to_uint8(np.full((3, 3), 7.0)).any()


def test_rgb_becomes_luma(tmp_path):
    a = np.zeros((4, 6, 3), np.uint8)
    a[:, :3] = (255, 0, 0)
    a[:, 3:] = (0, 0, 255)
    Image.fromarray(a).save(path := tmp_path / "x.png")
    out = pixels_of(path)
    assert out[0, 0] == 76 and out[0, 5] == 29  # 0.299 * 255, 0.114 * 255


def _half_transparent(mode: str) -> Image.Image:
    """Left half opaque light grey, right half fully transparent white, in `mode`."""
    rgba = np.zeros((4, 8, 4), np.uint8)
    rgba[:, :4] = (200, 200, 200, 255)
    rgba[:, 4:] = (255, 255, 255, 0)
    img = Image.fromarray(rgba)
    if mode == "P":
        pal = Image.new("P", img.size)
        pal.putpalette([200, 200, 200, 255, 255, 255])
        pal.putdata([0 if x < 4 else 1 for _ in range(4) for x in range(8)])
        pal.info["transparency"] = 1
        return pal
    return img.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_black(tmp_path, mode):
    img = _half_transparent(mode)
    img.save(path := tmp_path / "x.png", **({"transparency": 1} if mode == "P" else {}))
    assert Image.open(path).mode == mode
    out = pixels_of(path)
    assert out.shape == (4, 8)
    assert np.all(out[:, :4] == 200) and np.all(out[:, 4:] == 0)


def test_palette_without_transparency_maps_through_palette(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([10, 10, 10, 240, 240, 240])
    img.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    img.save(path := tmp_path / "x.png")
    out = pixels_of(path)
    assert out[0].tolist() == [10, 240, 10, 240]


def test_exif_orientation_is_honoured(tmp_path):
    a = np.zeros((20, 40), np.uint8)
    a[:, 20:] = 255  # stored: left dark, right bright
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    Image.fromarray(a).save(path := tmp_path / "x.jpg", exif=exif, quality=95)
    out = pixels_of(path)
    assert out.shape == (40, 20)  # portrait now
    assert out[:15].mean() < 30 and out[25:].mean() > 225  # left went to the top


# --- draft / reduce ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_draft_reduces_but_never_below_target(tmp_path, suffix):
    a = np.tile(np.linspace(0, 255, 1200).astype(np.uint8), (900, 1))
    Image.fromarray(a).save(path := tmp_path / f"x{suffix}")
    img = load_xray(path, draft=200)
    assert 200 <= min(img.size) < 450
    assert img.width > img.height  # aspect kept
    assert load_xray(path, draft=2000).size == (1200, 900)  # already small enough: untouched


def test_a_jpeg_a_png_and_an_in_memory_copy_are_reduced_alike(tmp_path):
    """JPEG DCT scaling halves; other formats must be reduced alike (224 -> 112, not 74)."""
    a = np.tile(np.linspace(0, 255, 224).astype(np.uint8), (224, 1))
    Image.fromarray(a).save(jpg := tmp_path / "x.jpg", quality=95)
    Image.fromarray(a).save(png := tmp_path / "x.png")
    sizes = {load_xray(jpg, draft=64).size, load_xray(png, draft=64).size}
    sizes.add(to_gray8(Image.fromarray(a), 64).size)
    assert sizes == {(112, 112)}
    assert to_gray8(Image.fromarray(a), 50).size == (56, 56)  # 224 // 50 = 4: a power of two


def test_draft_reduces_16bit_and_dicom(tmp_path):
    a = np.tile(np.linspace(0, 4095, 800).astype(np.uint16), (600, 1))
    Image.fromarray(a).save(png := tmp_path / "x.png")
    dcm = write_dicom(tmp_path / "x.dcm", a, BitsStored=12, HighBit=11)
    for path in (png, dcm):
        img = load_xray(path, draft=150)
        assert img.mode == "L" and img.size == (200, 150)
        assert_ramp(np.asarray(img)[75])


# --- DICOM -------------------------------------------------------------------------------------


def test_dicom_loads_and_windows_12bit_data(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", RAMP12, BitsStored=12, HighBit=11)
    out = pixels_of(path)
    assert out.shape == RAMP12.shape
    assert_ramp(out[0])


def test_monochrome1_is_inverted(tmp_path):
    m2 = pixels_of(write_dicom(tmp_path / "m2.dcm", RAMP12, BitsStored=12, HighBit=11))
    m1 = pixels_of(
        write_dicom(tmp_path / "m1.dcm", RAMP12, "MONOCHROME1", BitsStored=12, HighBit=11)
    )
    assert np.array_equal(m1, 255 - m2)
    assert m1[0, 0] == 255  # lowest stored value is white in MONOCHROME1


def test_window_centre_width_sets_contrast(tmp_path):
    full = pixels_of(
        write_dicom(
            tmp_path / "full.dcm",
            RAMP12,
            BitsStored=12,
            HighBit=11,
            WindowCenter=2048,
            WindowWidth=4096,
        )
    )
    narrow = pixels_of(
        write_dicom(
            tmp_path / "narrow.dcm",
            RAMP12,
            BitsStored=12,
            HighBit=11,
            WindowCenter=1000,
            WindowWidth=200,
        )
    )
    expected = RAMP12[0] / 4095 * 255  # a full-range window is (almost) the identity
    assert np.abs(full[0] - expected).max() <= 1.5
    assert np.all(narrow[0][RAMP12[0] < 900] == 0)
    assert np.all(narrow[0][RAMP12[0] > 1100] == 255)
    assert 0 < narrow[0][RAMP12[0] == 1008][0] < 255


def test_empty_window_elements_mean_no_window(tmp_path):
    path = write_dicom(
        tmp_path / "x.dcm", RAMP12, BitsStored=12, HighBit=11, WindowCenter=None, WindowWidth=None
    )
    assert_ramp(pixels_of(path)[0])


def test_rescale_slope_intercept_is_applied_before_window(tmp_path):
    stored = np.tile(np.arange(0, 1024, 4, dtype=np.uint16), (2, 1))  # values -1024..1020
    path = write_dicom(
        tmp_path / "x.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=0,
        WindowWidth=100,
    )
    out = pixels_of(path)[0]
    assert np.all(out[stored[0] < 480] == 0)  # rescaled < -64
    assert np.all(out[stored[0] > 540] == 255)  # rescaled > 56


def test_voi_lut_sequence_is_applied_over_its_output_range(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]  # claims 16-bit output, holds 12-bit values (common)
    item.add_new("LUTData", "US", list(range(4095, -1, -1)))  # an inverting LUT
    path = write_dicom(tmp_path / "x.dcm", RAMP12, BitsStored=12, HighBit=11, VOILUTSequence=[item])
    row = pixels_of(path)[0]
    assert row[0] == 255 and row[-1] <= 1
    assert np.all(np.diff(row.astype(int)) <= 0)


def test_rgb_dicom_becomes_gray(tmp_path):
    a = np.zeros((4, 6, 3), np.uint8)
    a[:, :3] = (255, 0, 0)
    a[:, 3:] = (0, 255, 0)
    out = pixels_of(write_dicom(tmp_path / "x.dcm", a, "RGB"))
    assert out.shape == (4, 6)
    assert out[0, 0] == 76 and out[0, 5] == 150


def test_multiframe_dicom_uses_first_frame(tmp_path):
    frames = np.stack([RAMP12, RAMP12[:, ::-1]])
    out = pixels_of(write_dicom(tmp_path / "x.dcm", frames, BitsStored=12, HighBit=11))
    assert out.shape == RAMP12.shape
    assert out[0, 0] == 0 and out[0, -1] == 255  # the rising ramp, not the falling one


def test_dicom_is_recognised_by_magic_not_name(tmp_path):
    write_dicom(path := tmp_path / "scan", RAMP12, BitsStored=12, HighBit=11)
    (text := tmp_path / "notes.dcm").write_text("not a dicom " * 20)
    (short := tmp_path / "short").write_bytes(b"DICM")
    assert is_dicom(path)
    assert not is_dicom(text) and not is_dicom(short) and not is_dicom(tmp_path / "missing")
    assert_ramp(pixels_of(path)[0])


def test_compressed_dicom_decodes_when_a_handler_is_installed(tmp_path):
    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG Baseline decoder for pydicom installed")
    a = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=95)
    path = write_dicom(
        tmp_path / "x.dcm",
        a,
        syntax=JPEGBaseline8Bit,
        fragments=[buf.getvalue()],
        LossyImageCompression="01",
    )
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    assert np.array_equal(pixels_of(path), expected)  # 8-bit, no VOI: kept as decoded


def test_compressed_dicom_without_handler_names_syntax_and_packages(tmp_path):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    # A JPEG-LS codestream skeleton (SOI, SOF55 for 8x8 8-bit gray, SOS, EOI): no encoder is
    # installed to make real scan data, and the loader must refuse before trying to decode.
    codestream = bytes.fromhex("ffd8 fff7000b080008000801011100 ffda000801010000000000 ffd9")
    path = write_dicom(
        tmp_path / "x.dcm",
        np.zeros((8, 8), np.uint8),
        syntax=JPEGLSLossless,
        fragments=[codestream],
    )
    with pytest.raises(DataError, match=r"x\.dcm") as err:
        load_xray(path)
    message = str(err.value)
    assert "JPEG-LS Lossless" in message and "pylibjpeg" in message and "Install" in message


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", RAMP12)
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(DataError, match="no pixel data"):
        load_xray(path)


def test_dicom_with_short_pixel_data_is_refused(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", RAMP12, BitsStored=12, HighBit=11)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"x\.dcm"):
        load_xray(path)


# --- unreadable and hostile files --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty"),
        ("empty.dcm", b"", "empty"),
        ("text.jpg", b"this is a radiology report, not an image\n" * 5, "not a JPEG, PNG"),
        ("text.png", b"hello", "not a JPEG, PNG"),
        ("text.dcm", b"hello" * 40, "not a DICOM file"),
        ("eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not a JPEG, PNG"),
    ],
)
def test_unreadable_files_raise_data_error_naming_the_file(tmp_path, name, content, reason):
    (path := tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=reason) as err:
        load_xray(path)
    assert str(path) in str(err.value)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_xray(tmp_path / "nope.jpg")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
@pytest.mark.parametrize("pil_tolerates_truncation", [False, True])
def test_truncated_files_are_refused(tmp_path, monkeypatch, suffix, pil_tolerates_truncation):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", pil_tolerates_truncation)
    a = np.random.default_rng(0).integers(0, 256, (200, 300), dtype=np.uint8)
    Image.fromarray(a).save(full := tmp_path / f"full{suffix}")
    data = full.read_bytes()
    (path := tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cut\\{suffix}"):
        load_xray(path)


def test_jpeg_with_bytes_after_end_marker_still_loads(tmp_path):
    a = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (32, 1))
    Image.fromarray(a).save(path := tmp_path / "x.jpg", quality=95)
    path.write_bytes(path.read_bytes() + b"\0" * 4096)  # padding some scanners append
    assert pixels_of(path).shape == (32, 64)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's, before ours
@pytest.mark.parametrize("size", [(100_000, 100_000), (10_000, 9_000)])  # past 2x and 1x PIL's cap
def test_bomb_sized_header_is_refused_without_decoding(tmp_path, size):
    (path := tmp_path / "bomb.png").write_bytes(png_header(*size))
    before = Image.MAX_IMAGE_PIXELS
    for max_pixels in (None, 10**12):  # a higher max_pixels does not lift PIL's own cap
        with pytest.raises(DataError, match="too large"):
            load_xray(path, max_pixels=max_pixels)
    assert before == Image.MAX_IMAGE_PIXELS  # PIL's global left alone


def test_max_pixels_caps_rasters_and_dicom_below_pils_limit(tmp_path):
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png := tmp_path / "x.png")
    dcm = write_dicom(tmp_path / "x.dcm", RAMP12)  # 8 x 256 = 2048 pixels
    for path in (png, dcm):
        with pytest.raises(DataError, match="too large"):
            load_xray(path, max_pixels=2000)
        assert load_xray(path, max_pixels=5000).mode == "L"


# --- the one readability check ------------------------------------------------------------------


def test_find_unreadable_reports_empty_and_corrupt_files(dataset):
    empty = dataset / "train" / "NORMAL" / "IM-6000-0001.jpeg"
    empty.write_bytes(b"")
    corrupt = dataset / "train" / "PNEUMONIA" / "person600_virus_1.jpeg"
    corrupt.write_bytes(b"definitely not a jpeg")
    bad = dict(find_unreadable(discover(dataset).files))
    assert set(bad) == {empty, corrupt}
    assert bad[empty] == "empty file"


def test_check_image_kinds_and_reasons_never_name_the_file(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (60, 80), dtype=np.uint8)
    Image.fromarray(a).save(good := tmp_path / "good.jpeg")
    (empty := tmp_path / "empty.png").write_bytes(b"")
    (text := tmp_path / "text.jpeg").write_text("a report, not an image")
    (cut := tmp_path / "cut.jpeg").write_bytes(good.read_bytes()[:-400])
    quick = {p.name: check_image(p, decode=False) for p in (good, empty, text, cut)}
    full = {p.name: check_image(p, decode=True, draft=32) for p in (good, empty, text, cut)}
    assert quick["good.jpeg"].ok and quick["good.jpeg"].dims == (80, 60)
    assert quick["good.jpeg"].image is None and full["good.jpeg"].image.mode == "L"
    assert [quick[n].kind for n in ("empty.png", "text.jpeg", "cut.jpeg")] == [
        "empty", "unreadable", None,  # a header scan cannot see truncation
    ]  # fmt: skip
    assert [full[n].kind for n in ("empty.png", "text.jpeg", "cut.jpeg")] == [
        "empty", "unreadable", "corrupt",
    ]  # fmt: skip
    assert "truncated" in full["cut.jpeg"].reason
    for check in (*quick.values(), *full.values()):
        assert str(tmp_path) not in (check.reason or "")


def test_check_images_keeps_only_what_the_caller_asks_for(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(5)]
    sizes = check_images(paths, decode=True, keep=lambda c: c.image.size)
    assert sizes == [(48, 40)] * 5


def test_load_xray_bytes_matches_the_file_and_names_the_upload_in_errors(tmp_path):
    path = write_image(tmp_path / "x.png", seed=1)
    assert np.array_equal(np.asarray(load_xray_bytes(path.read_bytes())), pixels_of(path))
    with pytest.raises(DataError, match=r"upload\.png: not a JPEG, PNG"):
        load_xray_bytes(b"hello" * 10, name="upload.png")
